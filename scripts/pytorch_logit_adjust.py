"""PyTorch values for the logit-adjusted cross-entropy test in tests/cross_entropy.rs.

    python scripts/pytorch_logit_adjust.py     # needs torch; prints Rust-ready numbers

A small fixed case: logits x (4 x 3, one row ignored), targets, class weights, per-class scale s
and offset o. PyTorch computes u = s * x + o, then
cross_entropy(u, t, weight=w, ignore_index=-100, reduction=..., label_smoothing=...), and the
gradient of the loss with respect to x through autograd (so the chain rule through s is
PyTorch's, not ours). Values are printed with 9 significant digits. PyTorch is not a dependency
of the crate or of CI: the numbers live in the test, this script only says where they came from.
"""

import torch

X = [[1.0, 2.0, 3.0], [1.0, -1.0, 0.5], [0.0, 0.25, -2.0], [3.0, 3.0, -1.0]]
T = [2, 0, -100, 1]
W = [0.2, 0.7, 1.6]
S = [1.5, 0.5, 2.0]
O = [0.25, -1.0, 0.75]


def case(reduction, eps):
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(S, dtype=torch.float64)
    o = torch.tensor(O, dtype=torch.float64)
    u = s * x + o
    loss = torch.nn.functional.cross_entropy(
        u, torch.tensor(T), weight=torch.tensor(W, dtype=torch.float64),
        ignore_index=-100, reduction=reduction, label_smoothing=eps)
    loss.sum().backward()
    return loss.detach().reshape(-1).tolist(), x.grad.reshape(-1).tolist()


def fmt(v):
    return "[" + ", ".join(f"{a:.9g}" for a in v) + "]"


for reduction, eps in [("mean", 0.0), ("none", 0.1)]:
    loss, grad = case(reduction, eps)
    print(f"{reduction} eps={eps}: loss {fmt(loss)}")
    print(f"    grad (of the summed loss) {fmt(grad)}")
