"""Shared networks: one critic of the batched twin critics computed alone."""

import pytest
import torch

from offtune.policies.networks import Critic, eval_mode, mlp


@pytest.mark.parametrize("activation,layer_norm", [("relu", False), ("elu", True)])
def test_one_member_equals_its_slice_of_the_batched_critic_and_trains_only_itself(activation, layer_norm):
    torch.manual_seed(0)
    critic = Critic(5, 2, (16, 16), members=2, activation=activation, layer_norm=layer_norm)
    for param in critic.parameters():  # LayerNorm's affine starts at 1 and 0: make the members differ
        torch.nn.init.normal_(param, std=0.3)
    observations, actions = torch.randn(7, 5), torch.randn(7, 2)
    both = critic(observations, actions)
    for index in (0, 1):
        torch.testing.assert_close(critic.member(index, observations, actions), both[index])

    critic.member(1, observations, actions).sum().backward()
    for param in critic.parameters():
        assert param.grad[0].abs().max() == 0 and param.grad[1].abs().max() > 0


def test_eval_mode_switches_dropout_off_and_restores_it_and_leaves_plain_networks_alone():
    torch.manual_seed(0)
    with_dropout = mlp(4, (64,), 2, dropout=0.5)
    plain = mlp(4, (64,), 2)
    x = torch.randn(8, 4)
    with eval_mode(with_dropout, plain):
        assert not with_dropout.training and plain.training
        torch.testing.assert_close(with_dropout(x), with_dropout(x))
    assert with_dropout.training and all(m.training for m in with_dropout.modules())
    with_dropout.eval()
    with eval_mode(with_dropout):
        pass
    assert not with_dropout.training  # a module already in eval mode stays there
