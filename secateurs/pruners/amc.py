"""AMCPruner (He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile
Devices", arXiv 1802.03494): a DDPG agent chooses each layer's sparsity in turn."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .._progress import Progress
from .._registry import PRUNERS
from ..analysis import count_flops_params
from ..checkpoint import load_optimizer_state, optimizer_state
from ..masks import Masks
from ..targets import get_module
from .search import SearchPruner, check_int

# key -> default (None: depends on the model or on total_episode)
_DDPG_DEFAULTS: dict[str, Any] = {
    "hidden1": 300, "hidden2": 300, "lr_c": 1e-3, "lr_a": 1e-4, "warmup": None, "discount": 0.99, "bsize": 64,
    "rmsize": None, "tau": 0.01, "init_delta": 0.5, "delta_decay": 0.99, "moving_alpha": 0.5,
}
_INT_KEYS = ("hidden1", "hidden2", "bsize", "rmsize")
_UNIT_KEYS = ("discount", "tau", "delta_decay", "moving_alpha")  # in (0, 1]


@contextlib.contextmanager
def _one_thread():
    """The agent's networks are tiny: more threads only add overhead (and on a busy
    machine a great deal of it), and one thread makes their arithmetic the same on every
    machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _actor(dim: int, h1: int, h2: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 1), nn.Sigmoid())


def _critic(dim: int, h1: int, h2: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim + 1, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 1))


@PRUNERS.register("amc")
class AMCPruner(SearchPruner):
    """Search per-layer sparsities with a DDPG agent (AMC), under an exact budget.

    Each episode walks the searched variables (layers, or dependency groups of layers
    that share channels) in model order. At step ``t`` the agent sees the layer's
    embedding (arXiv 1802.03494, section 3.1; each feature divided by its maximum over
    the layers): index, type (conv 0, linear 0.5, other 1), input and output channels,
    input height * width, stride, kernel size, the layer's dense FLOPs, the fraction of
    the budget's total removed by the earlier actions, the FLOPs of the later layers and
    the previous action. Its action ``a_t`` in [0, 1] is the fraction of the layer's units
    to prune, bounded so that the budget stays reachable: at least what the later layers,
    pruned as far as they may, cannot make up for, and at most what leaves the later
    layers something to prune; the last layer takes exactly what the budget still needs.
    Units the budget does not need are then given back, so every candidate meets the
    budget tightly. The episode's reward is the evaluator's score of its candidate minus a
    moving average of the scores (``moving_alpha``); every step of the episode gets it.

    The first ``warmup`` episodes take uniform random actions and are scored together
    (in parallel through ``executor``); after them and after every later episode, the
    agent is trained (one DDPG update per step of an episode: critic towards
    ``r + discount * Q'(s', mu'(s'))``, actor up the critic's gradient, soft target
    updates with ``tau``). Later episodes explore around the actor's action with a normal
    distribution truncated to [0, 1], of width
    ``init_delta * delta_decay ** (episode - warmup)``.

    Args:
        model: the model (unchanged during the search; holds the best candidate's masks
            after ``compress()``).
        config_list: selects the layers; every config gives the same ``sparse_ratio``: the
            fraction of the FLOPs (``target="flops"``), parameters or selected weights to
            remove.
        evaluator: a secateurs Evaluator that can evaluate, or a callable ``model -> float``
            (higher is better). Each candidate is scored on a copy of the model.
        total_episode: episodes (candidates scored), warm-up included; NNI's default 100.
        target: ``"flops"`` (default, the paper's), ``"params"`` (both of the model
            ModelSpeedup builds; need a channel algorithm and dummy_input) or
            ``"sparsity"`` (of the selected weights).
        pruning_algorithm: how units are ranked inside a layer: ``"l1"`` (default),
            ``"l2"``, ``"fpgm"`` (output channels) or ``"level"`` (weights; sparsity only).
        ddpg_params: the agent's settings: ``hidden1``, ``hidden2`` (300, 300),
            ``lr_a`` (1e-4), ``lr_c`` (1e-3), ``warmup`` (``total_episode // 4``),
            ``discount`` (0.99), ``bsize`` (64), ``rmsize`` (replay buffer,
            100 * the number of variables), ``tau`` (0.01), ``init_delta`` (0.5),
            ``delta_decay`` (0.99), ``moving_alpha`` (0.5). NNI's default warm-up is 100
            episodes, all of its default 100: its agent never acts. Here a quarter of the
            episodes are warm-up.
        dummy_input: example input (defaults to the evaluator's); gives the layers'
            input sizes and FLOPs.
        round_to: the kept units of each variable are rounded to a multiple of this
            (8 suits most hardware) where its bounds and the budget allow.
        seed: seeds the agent's networks and its own generator (same seed, same result).
        max_evaluations / time_limit: stop after this many candidates / seconds.
        executor: scores the warm-up episodes in parallel (any
            ``concurrent.futures.Executor``); results do not depend on it.
        checkpoint_dir: a checkpoint after the warm-up and after every episode (networks,
            optimizers, replay buffer, generator); the same call resumes there.
        progress: a line per episode on stderr (None: only on a terminal).

    Attributes:
        history: one dict per episode: ``"evaluation"``, ``"sparsity"`` (variable ->
            ratio), ``"counts"``, ``"budget"`` (fraction removed), ``"score"``,
            ``"episode"``, ``"reward"``, ``"warmup"``.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
        ...                       nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
        >>> def score(m):  # a known function: pruning the first conv costs
        ...     return -float((m[0].weight == 0).float().mean())
        >>> pruner = AMCPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.3}], score, total_episode=12,
        ...                    ddpg_params={"hidden1": 16, "hidden2": 16}, dummy_input=torch.randn(1, 3, 8, 8),
        ...                    seed=0)
        >>> _, masks = pruner.compress()
        >>> pruner.space.tight(torch.tensor(pruner._best[0]))
        True
        >>> len(pruner.history)
        12
    """

    needs = ("evaluator",)

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Any, total_episode: int = 100,
                 target: str = "flops", pruning_algorithm: str = "l1", ddpg_params: dict[str, Any] | None = None, *,
                 dummy_input: Any = None, round_to: int = 1, seed: int | None = None,
                 max_evaluations: int | None = None, time_limit: float | None = None,
                 executor: Executor | None = None, checkpoint_dir: str | os.PathLike | None = None,
                 progress: bool | None = None) -> None:
        owner = type(self).__name__
        check_int(owner, "total_episode", total_episode)
        check_int(owner, "round_to", round_to)
        given = dict(ddpg_params or {})
        if ddpg_params is not None and not isinstance(ddpg_params, dict):
            raise TypeError(f"The 'ddpg_params' parameter of {owner} must be a dict or None; got "
                            f"{type(ddpg_params).__name__}.")
        unknown = sorted(set(given) - set(_DDPG_DEFAULTS))
        if unknown:
            raise ValueError(f"{owner}: unknown ddpg_params key(s) {unknown}; known: {list(_DDPG_DEFAULTS)}.")
        for key, value in given.items():
            if key in _INT_KEYS:
                check_int(owner, f"ddpg_params[{key!r}]", value)
            elif key == "warmup":
                check_int(owner, "ddpg_params['warmup']", value, low=0)
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or (
                    key in _UNIT_KEYS and value > 1):
                bound = "in (0, 1]" if key in _UNIT_KEYS else "> 0"
                raise ValueError(f"The ddpg_params[{key!r}] parameter of {owner} must be a number {bound}; got "
                                 f"{value!r}.")
        super().__init__(model, config_list, evaluator, target=target, pruning_algorithm=pruning_algorithm,
                         dummy_input=dummy_input, seed=seed, max_evaluations=max_evaluations,
                         time_limit=time_limit, executor=executor, checkpoint_dir=checkpoint_dir,
                         progress=progress)
        params = {**_DDPG_DEFAULTS, **given}
        if params["warmup"] is None:
            params["warmup"] = total_episode // 4
        if params["rmsize"] is None:
            params["rmsize"] = 100 * len(self.space.variables)
        self.total_episode, self.round_to, self.ddpg_params = total_episode, round_to, params
        self._features = self._embedding()

    # -- the layer embedding ----------------------------------------------------------
    def _embedding(self) -> torch.Tensor:
        """Static features per variable (normalised by their max over variables)."""
        space = self.space
        rows = getattr(space, "rows", None)
        if rows is None and self.dummy_input is not None:
            rows = count_flops_params(self.net, self.dummy_input)[2]
        by_name = {r["name"]: r for r in rows or []}
        feats = []
        for t, slot in enumerate(space.slots):
            name = slot.keys[0][0]
            module = get_module(self.net, name)
            weight = getattr(module, "weight", None)
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else (space.variables[t].n, 1)
            row = by_name.get(name)
            if isinstance(module, nn.modules.conv._ConvNd):
                kind, stride, kernel = 0.0, math.prod(module.stride), math.prod(module.kernel_size)
                hw = math.prod(row["input_shape"][2:]) if row and row["input_shape"] else 1
            else:
                kind, stride, kernel, hw = (0.5 if isinstance(module, nn.Linear) else 1.0), 1, 1, 1
            flops = float(row["flops"]) if row else float(math.prod(shape))
            feats.append([t, kind, shape[1] if len(shape) > 1 else 1, shape[0], hw, stride, kernel, flops])
        out = torch.tensor(feats, dtype=torch.float64)
        top = out.abs().amax(0)
        return out / torch.where(top > 0, top, torch.ones_like(top))

    def _state(self, t: int, counts: torch.Tensor, previous: float) -> torch.Tensor:
        space = self.space
        prefix = torch.where(torch.arange(len(counts)) < t, counts, space.low)
        reduced = 1 - space.cost(prefix) / space.total
        flops = self._features[:, 7]
        rest = float(flops[t + 1:].sum() / flops.sum()) if float(flops.sum()) > 0 else 0.0
        return torch.cat([self._features[t], torch.tensor([reduced, rest, previous], dtype=torch.float64)]).float()

    # -- an episode -------------------------------------------------------------------
    def _bounds(self, t: int, counts: torch.Tensor) -> tuple[int, int]:
        """(L, U): the fewest units of variable ``t`` the budget allows, the most that
        leave the later variables something to prune."""
        space = self.space
        v = space.variables[t]
        later = torch.arange(len(counts)) > t

        def with_k(k: int, rest: torch.Tensor) -> torch.Tensor:
            c = torch.where(later, rest, counts).clone()
            c[t] = k
            return c

        lo, hi = v.low, v.high  # smallest k with cost <= budget, later at high
        while lo < hi:
            mid = (lo + hi) // 2
            if space.cost(with_k(mid, space.high)) <= space.budget:
                hi = mid
            else:
                lo = mid + 1
        low_k = lo
        if space.cost(with_k(v.low, space.low)) < space.budget:
            return low_k, low_k
        lo, hi = v.low, v.high  # largest k with cost >= budget, later at low
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if space.cost(with_k(mid, space.low)) >= space.budget:
                lo = mid
            else:
                hi = mid - 1
        return low_k, lo

    def _walk(self, act) -> tuple[torch.Tensor, list[tuple[torch.Tensor, float]]]:
        """One episode: ``act(t, state) -> a in [0, 1]``; returns the tight candidate and
        the (state, taken action) of each step."""
        space = self.space
        counts = space.low.clone()
        steps: list[tuple[torch.Tensor, float]] = []
        previous = 0.0
        last = len(space.variables) - 1
        for t, v in enumerate(space.variables):
            state = self._state(t, counts, previous)
            low_k, high_k = self._bounds(t, counts)
            if t == last:
                k = low_k
            else:
                a = float(act(t, state))
                k = int(math.floor(a * v.n + 0.5))
                if self.round_to > 1:
                    kept = max(self.round_to, int(math.floor((v.n - k) / self.round_to + 0.5)) * self.round_to)
                    k = v.n - kept
                k = min(max(k, v.low), v.high)
                k = min(max(k, low_k), max(low_k, high_k))
            counts[t] = k
            previous = k / v.n
            steps.append((state, previous))
        counts = space._give_back(counts, counts.double() / space.n)
        return counts, steps

    # -- the agent --------------------------------------------------------------------
    def _build_agent(self, dim: int) -> None:
        p = self.ddpg_params
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed or 0)
            self.actor = _actor(dim, p["hidden1"], p["hidden2"])
            self.critic = _critic(dim, p["hidden1"], p["hidden2"])
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=p["lr_a"])
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=p["lr_c"])
        size = p["rmsize"]
        self.buffer = {"state": torch.zeros(size, dim), "action": torch.zeros(size, 1),
                       "reward": torch.zeros(size, 1), "next": torch.zeros(size, dim),
                       "done": torch.zeros(size, 1)}
        self._stored, self._pointer = 0, 0

    def _observe(self, steps: list[tuple[torch.Tensor, float]], reward: float) -> None:
        size = self.ddpg_params["rmsize"]
        for i, (state, action) in enumerate(steps):
            done = i == len(steps) - 1
            nxt = state if done else steps[i + 1][0]
            for key, value in (("state", state), ("action", action), ("reward", reward), ("next", nxt),
                               ("done", float(done))):
                self.buffer[key][self._pointer] = torch.as_tensor(value, dtype=torch.float32)
            self._pointer = (self._pointer + 1) % size
            self._stored = min(self._stored + 1, size)

    def _update(self, rng: np.random.Generator) -> None:
        with _one_thread():
            self._update_once(rng)

    def _update_once(self, rng: np.random.Generator) -> None:
        p = self.ddpg_params
        idx = torch.from_numpy(rng.integers(0, self._stored, p["bsize"]))
        s, a, r, s1, d = (self.buffer[k][idx] for k in ("state", "action", "reward", "next", "done"))
        with torch.no_grad():
            y = r + p["discount"] * self.critic_target(torch.cat([s1, self.actor_target(s1)], 1)) * (1 - d)
        q = self.critic(torch.cat([s, a], 1))
        loss = nn.functional.mse_loss(q, y)
        self.critic_optim.zero_grad()
        loss.backward()
        self.critic_optim.step()
        policy = -self.critic(torch.cat([s, self.actor(s)], 1)).mean()
        self.actor_optim.zero_grad()
        policy.backward()
        self.actor_optim.step()
        with torch.no_grad():
            for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for w, wt in zip(net.parameters(), target.parameters()):
                    wt.mul_(1 - p["tau"]).add_(w, alpha=p["tau"])

    def _explore(self, rng: np.random.Generator, state: torch.Tensor, delta: float) -> float:
        with torch.no_grad(), _one_thread():
            mu = float(self.actor(state.unsqueeze(0)))
        for _ in range(10_000):  # rejection sampling of the normal truncated to [0, 1]
            a = rng.normal(mu, delta)
            if 0 <= a <= 1:
                return float(a)
        return min(max(mu, 0.0), 1.0)

    # -- checkpoints ------------------------------------------------------------------
    def _save(self, episode: int, baseline: float | None, rng: np.random.Generator, fingerprint, done=False) -> None:
        if self.checkpoint_dir is None:
            return
        tensors: dict[str, torch.Tensor] = {}
        for name in ("actor", "critic", "actor_target", "critic_target"):
            for key, value in getattr(self, name).state_dict().items():
                tensors[f"{name}/{key}"] = value
        opt_a, meta_a = optimizer_state(self.actor_optim, "actor_optim/")
        opt_c, meta_c = optimizer_state(self.critic_optim, "critic_optim/")
        tensors.update(opt_a)
        tensors.update(opt_c)
        tensors.update({f"buffer/{k}": v for k, v in self.buffer.items()})
        self.save_state(episode, tensors, {
            "episode": episode, "baseline": baseline, "rng": rng.bit_generator.state, "done": done,
            "stored": self._stored, "pointer": self._pointer, "actor_optim": meta_a, "critic_optim": meta_c},
            fingerprint)

    def _load(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], rng: np.random.Generator) -> None:
        for name in ("actor", "critic", "actor_target", "critic_target"):
            prefix = f"{name}/"
            getattr(self, name).load_state_dict({k[len(prefix):]: v.clone() for k, v in tensors.items()
                                                 if k.startswith(prefix)})
        load_optimizer_state(self.actor_optim, tensors, meta["actor_optim"], "actor_optim/")
        load_optimizer_state(self.critic_optim, tensors, meta["critic_optim"], "critic_optim/")
        self.buffer = {k: tensors[f"buffer/{k}"].clone() for k in self.buffer}
        self._stored, self._pointer = int(meta["stored"]), int(meta["pointer"])
        rng.bit_generator.state = meta["rng"]

    # -- the search -------------------------------------------------------------------
    def compress(self) -> tuple[nn.Module, Masks]:
        """Run the episodes; the model ends with the best candidate's masks attached.

        Returns:
            The model and the masks.
        """
        space = self.space
        p = self.ddpg_params
        rng = np.random.default_rng(self.seed)
        fingerprint = self.fingerprint({"total_episode": self.total_episode, "ddpg_params": p,
                                        "round_to": self.round_to, "ratio": self.ratio,
                                        "max_evaluations": self.max_evaluations})
        self._started = time.monotonic()
        self._build_agent(len(self._features[0]) + 3)
        alpha = p["moving_alpha"]
        warmup = min(p["warmup"], self.total_episode)
        bar = Progress(self.total_episode, type(self).__name__, self.progress, noun="episode")
        resumed = self.load_state(fingerprint)
        baseline: float | None = None
        if resumed is None:
            self.history, self._best, self._evaluations = [], None, 0
            episode = 0
        else:
            _, tensors, meta = resumed
            self._load(tensors, meta, rng)
            episode, baseline = int(meta["episode"]), meta["baseline"]
            if meta["done"]:
                return self._finish()

        def reward_of(score: float) -> float:
            nonlocal baseline
            baseline = score if baseline is None else baseline
            baseline += alpha * (score - baseline)
            return score - baseline

        try:
            if episode < warmup:
                walks = [self._walk(lambda t, s: rng.uniform()) for _ in range(self.budget_left(warmup))]
                scores = self.evaluate([c for c, _ in walks])
                for (counts, steps), score in zip(walks, scores):
                    reward = reward_of(score)
                    self.record(counts, score, episode=episode, reward=reward, warmup=True)
                    self._observe(steps, reward)
                    episode += 1
                    bar.update(episode, **{self.target: space.reached(counts), "score": score,
                                           "best": self._best[1]})
                if walks:
                    for _ in walks[-1][1]:
                        self._update(rng)
                self._save(episode, baseline, rng, fingerprint)
            while episode < self.total_episode and episode >= warmup and self.budget_left(1):
                delta = p["init_delta"] * p["delta_decay"] ** (episode - warmup)
                counts, steps = self._walk(lambda t, s, delta=delta: self._explore(rng, s, delta))
                (score,) = self.evaluate([counts])
                reward = reward_of(score)
                self.record(counts, score, episode=episode, reward=reward, warmup=False)
                self._observe(steps, reward)
                for _ in steps:
                    self._update(rng)
                episode += 1
                bar.update(episode, **{self.target: space.reached(counts), "score": score, "best": self._best[1]})
                self._save(episode, baseline, rng, fingerprint)
        finally:
            bar.close()
        if self._best is None:
            raise RuntimeError(f"{type(self).__name__}: no episode ran (max_evaluations or time_limit spent before "
                               f"the first).")
        self._save(episode, baseline, rng, fingerprint, done=True)
        return self._finish()
