import torch

from diffnotes import nets, schedules
from diffnotes.targets import Gaussian


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = nets.EpsMLP(3, hidden=16, layers=2, seed=5), nets.EpsMLP(3, hidden=16, layers=2, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = nets.EpsMLP(3, hidden=16, layers=2, seed=6)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_dsm_training_same_seed_same_numbers_and_learns_a_gaussian_score():
    target = Gaussian(torch.tensor([1.0, -1.0]), torch.tensor([[0.5, 0.2], [0.2, 0.4]]))
    sch = schedules.linear(100)

    def run():
        net = nets.EpsMLP(2, hidden=32, layers=2, seed=0)
        g = torch.Generator().manual_seed(0)
        losses = nets.train_dsm(net, lambda n, gen: target.sample(n, generator=gen), sch, steps=300, batch=256,
                                lr=3e-3, generator=g)
        return net, losses
    (n1, l1), (n2, l2) = run(), run()
    assert l1 == l2
    # the learned score is close to the exact one at a moderate noise level (relative L2 error under 25%)
    lab = sch.lab(50)
    x = target.sample(4000, lab, generator=torch.Generator().manual_seed(1))
    s_true, s_net = target.score(x, lab), nets.NetScore(n1)(x, lab)
    rel = ((s_net - s_true).norm(dim=1) ** 2).mean() / (s_true.norm(dim=1) ** 2).mean()
    assert float(rel) < 0.25 ** 2
