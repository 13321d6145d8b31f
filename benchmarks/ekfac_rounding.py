"""EKFAC's sensitivity to a 1e-15 relative change of the inputs (float64, digits MLP), K-FAC for reference;
then, after 2 steps, which eigenvectors of each factor turned and where the diagonal S moved (issue 25).

Run: PYTHONPATH=src python benchmarks/ekfac_rounding.py
"""
import torch
from torch import nn
from geomopt.data import load_dataset
from geomopt.optim import EKFAC, KFAC

torch.set_default_dtype(torch.float64)
bundle = load_dataset("digits", seed=0, train_size=400)
x, y = bundle.train.tensors
x = x.double().flatten(1)

def run(opt_cls, x, steps=8, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    opt = opt_cls(model, lr=0.1, update_freq=1, inv_freq=2, kl_clip=None, **kw)
    traj = []
    for k in range(steps):
        xb, yb = x[50 * k:50 * k + 50], y[50 * k:50 * k + 50]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        traj.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return traj, opt, model

g = torch.Generator().manual_seed(1)
x2 = x * (1 + 1e-15 * torch.randn(x.shape, generator=g))
for cls in (KFAC, EKFAC):
    a, opt, model = run(cls, x)
    b, *_ = run(cls, x2)
    print(cls.__name__, " ".join(f"{(p - q).abs().max().item():.1e}" for p, q in zip(a, b)))
    if cls is EKFAC:
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                st = opt.state[module.weight]
                for f in ("A", "G"):
                    e = torch.linalg.eigvalsh(st[f])
                    rel = (e[1:] - e[:-1]) / e[-1]
                    print(f"  layer {name} {f}: d={len(e)}, eigenvalues <= 1e-12 max: {(e <= 1e-12 * e[-1]).sum().item()}, "
                          f"smallest relative gap among the rest: {rel[(e[:-1] > 1e-12 * e[-1])].min().item():.1e}")

print("--- where: EKFAC, 2 steps")
a, opt1, m1 = run(EKFAC, x, steps=2)
b, opt2, m2 = run(EKFAC, x2, steps=2)
for (name, mod1), mod2 in zip(m1.named_modules(), m2.modules()):
    if not isinstance(mod1, nn.Linear):
        continue
    print(f" layer {name}: weight diff {(mod1.weight - mod2.weight).abs().max().item():.1e}")
    s1, s2 = opt1.state[mod1.weight], opt2.state[mod2.weight]
    for f in ("A", "G"):
        u1, u2 = s1[f"U_{f}"], s2[f"U_{f}"]
        overlap = (u1.T @ u2).abs()
        e = torch.linalg.eigvalsh(s1[f])
        bad = [i for i in range(len(e)) if overlap[i, i] < 1 - 1e-6]
        print(f"  U_{f}: eigenvectors rotated: {bad}, their eigenvalues {[f'{e[i].item():.2e}' for i in bad]}")
    print(f"  S diff {(s1['S'] - s2['S']).abs().max().item():.1e}, S scale {s1['S'].abs().max().item():.1e}")
s1, s2 = opt1.state[m1[0].weight], opt2.state[m2[0].weight]
e = torch.linalg.eigvalsh(s1["A"])
print("A max eigenvalue", e[-1].item(), "x range", x.min().item(), x.max().item())
print("S column max diff", [f"{v:.0e}" for v in (s1["S"] - s2["S"]).abs().amax(0).tolist()[:16]])
print("S column scale", [f"{v:.0e}" for v in s1["S"].abs().amax(0).tolist()[:16]])
print("overlap diag", [f"{v:.6f}" for v in (s1["U_A"].T @ s2["U_A"]).abs().diagonal().tolist()[:16]])
