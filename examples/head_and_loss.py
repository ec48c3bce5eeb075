"""Train a small network with the L-GM head and loss in place of a last linear layer and cross-entropy.

The L-GM loss of Wan, Zhong, Li, Chen, "Rethinking Feature Distribution for Loss Functions in Image
Classification" (CVPR 2018): cross-entropy over logits -d_k (1 + alpha [k == y]) plus lambda times the
likelihood term; ``form="center"`` is the official code's 0.5 ||x - mu_y||^2. Random tensors stand in for your
data loader, so this runs anywhere in a second:

    python examples/head_and_loss.py
"""

import torch
from torch import nn

from training import LGMHead, lgm_loss

backbone = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 16))  # -> features
# a Gaussian per class: means, variances (fixed at 1 here), priors
head = LGMHead(feat_dim=16, num_classes=10)
opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)
x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))  # your data loader here

for _ in range(20):
    feats = backbone(x)
    logits = head(feats, y, alpha=0.1)  # the margin alpha applies in training mode only
    loss, l_cls, l_lkd = lgm_loss(head, feats, logits, y, lam=1.0, form="center")  # L_cls + lambda * L_lkd
    opt.zero_grad()
    loss.backward()
    opt.step()

head.eval()
with torch.no_grad():
    feats = backbone(x)
    pred = head(feats).argmax(1)  # the class
    log_lik = head.log_likelihood(feats).gather(1, pred[:, None])  # log N(f(x); mu_k, Lambda_k), nats
print(f"loss {loss.item():.3f}, first predictions {pred[:5].tolist()}")
