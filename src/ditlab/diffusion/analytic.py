"""Exact denoisers of Gaussian-mixture data, for testing samplers without a network.

For data x0 ~ sum_k w_k N(mu_k, Sigma_k) and x_t = a x0 + s eps, each component gives
x_t ~ N(a mu_k, S_k) with S_k = a^2 Sigma_k + s^2 I, and
E[eps | x_t, k] = s S_k^{-1} (x_t - a mu_k); the mixture posterior weighs components by their
responsibilities. Class labels select one component (label K is the "null" label: the whole
mixture), so classifier-free guidance can be tested too. Data are vectors: x has shape (N, d).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class GaussianMixture:
    """A d-dimensional Gaussian mixture with exact posterior means under any Gaussian corruption."""

    def __init__(self, means: Tensor, covs: Tensor, weights: Sequence[float] | Tensor | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, d)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)  # (K, d, d)
        k = self.means.shape[0]
        w = (torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None
             else torch.as_tensor(weights, dtype=torch.float64))
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    def mean(self) -> Tensor:
        """The mixture's mean (d,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """The mixture's covariance (d, d)."""
        mu = self.mean()
        second = sum(w * (c + torch.outer(m, m)) for w, m, c in zip(self.weights, self.means, self.covs, strict=True))
        return second - torch.outer(mu, mu)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples (n, d) float64."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs + 1e-12 * torch.eye(self.dim, dtype=torch.float64))
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + torch.einsum("nij,nj->ni", chol[comp], z)

    def posterior_eps(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float, y: Tensor | None = None) -> Tensor:
        """E[eps | x_t = x] for x_t = alpha x0 + sigma eps; ``y`` (N,) restricts to component y (K = all)."""
        x64 = x.to(torch.float64)
        n, d = x64.shape
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1).expand(n)
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(n)
        # Samplers use one noise level per step: then the d x d inverses are computed once, not per sample.
        shared = bool((a == a[0]).all() and (s == s[0]).all())
        if shared and self.num_components == 1:
            # One Gaussian, one noise level: E[eps | x] = s S^{-1} (x - a mu), a single matmul.
            S = a[0] ** 2 * self.covs[0] + s[0] ** 2 * torch.eye(d, dtype=torch.float64)
            return (s[0] * (x64 - a[0] * self.means[0]) @ torch.linalg.inv(S)).to(x.dtype)  # S symmetric
        la, ls = (a[:1], s[:1]) if shared else (a, s)
        eye = torch.eye(d, dtype=torch.float64)
        S = la.reshape(-1, 1, 1, 1) ** 2 * self.covs + ls.reshape(-1, 1, 1, 1) ** 2 * eye  # (N or 1, K, d, d)
        S_inv, logdet = torch.linalg.inv(S), torch.linalg.slogdet(S)[1]  # (N or 1, K, d, d), (N or 1, K)
        diff = x64[:, None, :] - a.reshape(-1, 1, 1) * self.means.unsqueeze(0)  # (N, K, d)
        sol = torch.einsum("nkij,nkj->nki", S_inv.expand(n, -1, -1, -1), diff)  # S_k^{-1} (x - a mu_k)
        log_resp = torch.log(self.weights) - 0.5 * (logdet + (diff * sol).sum(-1) + d * math.log(2 * math.pi))
        if y is not None:
            y = y.to(torch.long).reshape(-1)
            only = torch.nn.functional.one_hot(y.clamp(max=self.num_components - 1), self.num_components).bool()
            only |= (y >= self.num_components).unsqueeze(1)  # the null label keeps every component
            log_resp = log_resp.masked_fill(~only, -math.inf)
        resp = torch.softmax(log_resp, dim=1)  # (N, K)
        eps = s.reshape(-1, 1) * (resp.unsqueeze(-1) * sol).sum(1)  # (N, d)
        return eps.to(x.dtype)

    def ddpm_model(self, process, learn_sigma_value: float = -1.0):
        """A network-shaped function ``model(x, t, y=None)`` for a GaussianProcess: the exact prediction
        in its parameterisation (eps / x0 / v), plus constant variance values if it learns sigma."""
        acp = process.alphas_cumprod

        def model(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
            ab = acp[t.round().long().cpu()].to(torch.float64)
            a, s = ab.sqrt().unsqueeze(1), (1 - ab).sqrt().unsqueeze(1)
            eps = self.posterior_eps(x, a, s, y).to(torch.float64)
            x0 = (x.to(torch.float64) - s * eps) / a
            out = {"eps": eps, "x0": x0, "v": a * eps - s * x0}[process.prediction].to(x.dtype)
            if process.learn_sigma:
                out = torch.cat([out, torch.full_like(out, learn_sigma_value)], dim=1)
            return out

        return model

    def flow_model(self):
        """A network-shaped function ``model(x, t, y=None)`` returning the exact velocity E[eps - x0 | x_t]."""

        def model(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
            t64 = t.to(torch.float64).unsqueeze(1)
            a, s = 1.0 - t64, t64
            eps = self.posterior_eps(x, a, s, y).to(torch.float64)
            # x0 = (x - s eps) / a; at t = 1 (a = 0) x says nothing about x0, so E[x0 | x] = E[x0].
            safe_a = a.clamp(min=1e-12)
            x0 = torch.where(a > 1e-12, (x.to(torch.float64) - s * eps) / safe_a, self._prior_mean(y, x))
            return (eps - x0).to(x.dtype)

        return model

    def _prior_mean(self, y: Tensor | None, x: Tensor) -> Tensor:
        """E[x0] under the (class-restricted) mixture, broadcast to x's batch: (N, d)."""
        if y is None:
            return self.mean().expand(x.shape[0], -1)
        y = y.to(torch.long).reshape(-1)
        means = self.means[y.clamp(max=self.num_components - 1)]
        return torch.where((y >= self.num_components).unsqueeze(1), self.mean().expand_as(means), means)
