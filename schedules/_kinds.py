"""Schedule kinds: immutable specs plus one array-namespace implementation of their math.

Each kind is a frozen pydantic model whose fields are the optax argument names. Its ``value(step,
xp)`` is written once against an array namespace ``xp`` (``numpy`` for PyTorch and plain Python,
``jax.numpy`` inside ``jax.jit`` for optax), so no formula exists twice. The operation order
follows optax's own functions, so both agree to the last bit where optax has the kind.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

Steps = Annotated[int, Field(ge=0)]
PositiveSteps = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0.0)]
Positive = Annotated[float, Field(gt=0.0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class Schedule(BaseModel):
    """A map from an optimizer update index (0-based) to a hyperparameter value."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False)
    stateful: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _lists_as_tuples(cls, data: Any) -> Any:
        """JSON and YAML give lists; the immutable model keeps tuples."""
        if isinstance(data, dict):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return data

    def value(self, step: Any, xp: Any = np) -> Any:
        """The value at ``step`` (a scalar or an array of steps) computed with namespace ``xp``."""
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return float(self.value(np.int64(step), np))

    def values(self, start: int, stop: int) -> np.ndarray:
        """Values for steps ``start..stop-1`` in one vectorised evaluation (float64)."""
        steps = np.arange(start, stop, dtype=np.int64)
        return np.broadcast_to(np.asarray(self.value(steps, np), dtype=np.float64), steps.shape)

    def spec(self) -> dict[str, Any]:
        """The JSON-safe spec that ``schedules.from_spec`` turns back into an equal schedule."""
        return self.model_dump(mode="json", by_alias=True)


# --- building blocks shared by several kinds (pure functions of xp) ------------------------------


def _polynomial(step, xp, init_value, end_value, power, transition_steps, transition_begin):
    if transition_steps <= 0:
        return xp.zeros_like(step, dtype=float) + init_value
    count = xp.clip(step - transition_begin, 0, transition_steps)
    # exactly 0 at the end: XLA's float32 division leaves -3e-8 there, and a fractional power NaN
    frac = xp.where(count >= transition_steps, 0.0, 1 - count / transition_steps)
    return (init_value - end_value) * (frac**power) + end_value


def _cosine_decay(step, xp, init_value, decay_steps, alpha, exponent):
    count = xp.minimum(step * 1.0, float(decay_steps))
    cosine = 0.5 * (1 + xp.cos(xp.pi * count / float(decay_steps)))
    return init_value * ((1 - alpha) * cosine**exponent + alpha)


def _exponential(step, xp, init_value, transition_steps, decay_rate, transition_begin, staircase,
                 end_value):
    decreased = step - transition_begin
    if staircase:  # an integer division: XLA's floor(a / b) falls one short at some multiples
        p = xp.floor_divide(decreased, transition_steps)
    else:
        p = decreased / transition_steps
    p = xp.maximum(p, 0)  # the branch masked out below must not overflow either
    if decay_rate > 1.0:  # growth: stop the exponent just past end_value so it never overflows
        p = xp.minimum(p, max(math.log(end_value / init_value) / math.log(decay_rate), 0.0) + 1.0)
    decayed = xp.where(decreased <= 0, init_value, init_value * xp.power(decay_rate, p))
    if end_value is not None:
        decayed = (xp.maximum if decay_rate < 1.0 else xp.minimum)(decayed, end_value)
    return decayed


def _interpolate(step, xp, interpolate_type, init_value, boundaries, scales):
    """optax's piecewise_interpolate, vectorised over a leading axis of steps."""
    bounds = np.asarray((0,) + tuple(boundaries))
    vals = np.cumprod(np.asarray((init_value,) + tuple(scales), dtype=np.float64))
    count = xp.asarray(step)[..., None]
    sizes = np.maximum(bounds[1:] - bounds[:-1], 1)
    inside = xp.logical_and(bounds[:-1] <= count, count < bounds[1:])
    pct = (count - bounds[:-1]) / sizes
    start, end = vals[:-1], vals[1:]
    if interpolate_type == "linear":
        interp = (end - start) * pct + start
    else:
        interp = end + (start - end) / 2.0 * (xp.cos(xp.pi * pct) + 1)
    return xp.sum(xp.where(inside, interp, 0.0), axis=-1) + (bounds[-1] <= count[..., 0]) * vals[-1]


def _join(step, xp, parts, boundaries, absolute=False):
    out = parts[0].value(step, xp)
    for boundary, part in zip(boundaries, parts[1:]):
        out = xp.where(step < boundary, out, part.value(step if absolute else step - boundary, xp))
    return out


def _boundary_map(value: Any) -> Any:
    """Accept ``{step: scale}`` with int or numeric-string keys (JSON), keep sorted pairs."""
    if isinstance(value, dict):
        pairs = [(int(k) if isinstance(k, str) and k.strip().lstrip("-").isdigit() else k, v)
                 for k, v in value.items()]
        if all(isinstance(k, int) for k, _ in pairs):
            pairs.sort()
        return tuple(pairs)
    if isinstance(value, (list, tuple)):  # [[step, scale], ...] as JSON may carry it
        return tuple(tuple(pair) if isinstance(pair, list) else pair for pair in value)
    return value


class _Boundaries(Schedule):
    boundaries_and_scales: tuple[tuple[Steps, NonNegative], ...] = ()

    @field_validator("boundaries_and_scales", mode="before")
    @classmethod
    def _to_pairs(cls, value):
        return _boundary_map(value)

    @field_serializer("boundaries_and_scales")
    def _as_json_map(self, pairs):
        return {str(step): scale for step, scale in pairs}

    @model_validator(mode="after")
    def _distinct(self):
        steps = [b for b, _ in self.boundaries_and_scales]
        if len(set(steps)) != len(steps):
            raise ValueError("boundaries_and_scales: boundaries must be distinct steps")
        return self


# --- the kinds ----------------------------------------------------------------------------------


class Constant(Schedule):
    kind: Literal["constant"] = "constant"
    value_: float = Field(alias="value")

    model_config = ConfigDict(populate_by_name=True)

    def value(self, step, xp=np):
        return xp.zeros_like(step, dtype=float) + self.value_


class Polynomial(Schedule):
    kind: Literal["polynomial"] = "polynomial"
    init_value: float
    end_value: float
    power: Positive
    transition_steps: Steps
    transition_begin: Steps = 0

    def value(self, step, xp=np):
        return _polynomial(step, xp, self.init_value, self.end_value, self.power,
                           self.transition_steps, self.transition_begin)


class Linear(Schedule):
    kind: Literal["linear"] = "linear"
    init_value: float
    end_value: float
    transition_steps: Steps
    transition_begin: Steps = 0

    def value(self, step, xp=np):
        return _polynomial(step, xp, self.init_value, self.end_value, 1, self.transition_steps,
                           self.transition_begin)


class CosineDecay(Schedule):
    kind: Literal["cosine_decay"] = "cosine_decay"
    init_value: float
    decay_steps: PositiveSteps
    alpha: float = 0.0
    exponent: Positive = 1.0

    def value(self, step, xp=np):
        return _cosine_decay(step, xp, self.init_value, self.decay_steps, self.alpha, self.exponent)


class _ExponentialTail(Schedule):
    """The fields and check shared by the two exponential kinds."""

    base_field: ClassVar[str]
    transition_steps: PositiveSteps
    decay_rate: Positive
    transition_begin: Steps = 0
    staircase: bool = False
    end_value: Optional[float] = None

    @model_validator(mode="after")
    def _bounded_growth(self):
        base = getattr(self, self.base_field)
        if self.decay_rate > 1.0 and (self.end_value is None or self.end_value <= 0.0):
            raise ValueError("end_value: expected a positive upper bound when decay_rate > 1 "
                             "(an unbounded exponential growth overflows)")
        if self.decay_rate > 1.0 and base <= 0.0:
            raise ValueError(f"{self.base_field}: expected a positive value to grow from when "
                             f"decay_rate > 1, got {base}")
        return self

    def _decay(self, step, xp, init_value):
        return _exponential(step, xp, init_value, self.transition_steps, self.decay_rate,
                            self.transition_begin, self.staircase, self.end_value)


class ExponentialDecay(_ExponentialTail):
    kind: Literal["exponential_decay"] = "exponential_decay"
    base_field: ClassVar[str] = "init_value"
    init_value: float

    def value(self, step, xp=np):
        return self._decay(step, xp, self.init_value)


class PiecewiseConstant(_Boundaries):
    kind: Literal["piecewise_constant"] = "piecewise_constant"
    init_value: float

    def value(self, step, xp=np):
        v = xp.zeros_like(step, dtype=float) + self.init_value
        for threshold, scale in self.boundaries_and_scales:
            indicator = xp.maximum(0.0, xp.sign(threshold - step))
            v = v * indicator + (1 - indicator) * scale * v
        return v


class PiecewiseInterpolate(_Boundaries):
    kind: Literal["piecewise_interpolate"] = "piecewise_interpolate"
    interpolate_type: Literal["linear", "cosine"]
    init_value: float

    def value(self, step, xp=np):
        steps = [b for b, _ in self.boundaries_and_scales]
        scales = [s for _, s in self.boundaries_and_scales]
        return _interpolate(step, xp, self.interpolate_type, self.init_value, steps, scales)


class WarmupConstant(Schedule):
    kind: Literal["warmup_constant"] = "warmup_constant"
    init_value: float
    peak_value: float
    warmup_steps: Steps

    def value(self, step, xp=np):
        return _polynomial(step, xp, self.init_value, self.peak_value, 1, self.warmup_steps, 0)


class WarmupCosineDecay(Schedule):
    kind: Literal["warmup_cosine_decay"] = "warmup_cosine_decay"
    init_value: float
    peak_value: float
    warmup_steps: Steps
    decay_steps: PositiveSteps
    end_value: float = 0.0
    exponent: Positive = 1.0

    @model_validator(mode="after")
    def _decay_after_warmup(self):
        if self.decay_steps <= self.warmup_steps:
            raise ValueError(
                f"decay_steps: expected more than warmup_steps ({self.warmup_steps}), the total "
                f"length includes the warmup; got {self.decay_steps}")
        return self

    def value(self, step, xp=np):
        alpha = 0.0 if self.peak_value == 0.0 else self.end_value / self.peak_value
        warm = _polynomial(step, xp, self.init_value, self.peak_value, 1, self.warmup_steps, 0)
        decay = _cosine_decay(step - self.warmup_steps, xp, self.peak_value,
                              self.decay_steps - self.warmup_steps, alpha, self.exponent)
        return xp.where(step < self.warmup_steps, warm, decay)


class WarmupExponentialDecay(_ExponentialTail):
    kind: Literal["warmup_exponential_decay"] = "warmup_exponential_decay"
    base_field: ClassVar[str] = "peak_value"
    init_value: float
    peak_value: float
    warmup_steps: Steps

    def value(self, step, xp=np):
        warm = _polynomial(step, xp, self.init_value, self.peak_value, 1, self.warmup_steps, 0)
        decay = self._decay(step - self.warmup_steps, xp, self.peak_value)
        return xp.where(step < self.warmup_steps, warm, decay)


class _OneCycle(Schedule):
    transition_steps: PositiveSteps
    peak_value: float
    pct_start: Fraction = 0.3
    div_factor: Positive = 25.0
    final_div_factor: Positive = 1e4


class LinearOnecycle(_OneCycle):
    kind: Literal["linear_onecycle"] = "linear_onecycle"
    pct_final: Fraction = 0.85

    @model_validator(mode="after")
    def _ordered(self):
        if self.pct_final <= self.pct_start:
            raise ValueError(f"pct_final: expected more than pct_start ({self.pct_start}), "
                             f"got {self.pct_final}")
        return self

    def value(self, step, xp=np):
        t = self.transition_steps
        # a dict, as optax builds it: when two boundaries coincide the later scale wins
        scales = {int(self.pct_start * t): self.div_factor, int(self.pct_final * t):
                  1.0 / self.div_factor, t: 1.0 / self.final_div_factor}
        bounds = sorted(scales)
        return _interpolate(step, xp, "linear", self.peak_value / self.div_factor, bounds,
                            [scales[b] for b in bounds])


class CosineOnecycle(_OneCycle):
    kind: Literal["cosine_onecycle"] = "cosine_onecycle"

    def value(self, step, xp=np):
        t = self.transition_steps
        bounds = [int(self.pct_start * t), t]
        scales = [self.div_factor, 1.0 / (self.div_factor * self.final_div_factor)]
        return _interpolate(step, xp, "cosine", self.peak_value / self.div_factor, bounds, scales)


class Sgdr(Schedule):
    """Warm restarts: warmup_cosine_decay cycles back to back (optax's ``cosine_kwargs``)."""

    kind: Literal["sgdr"] = "sgdr"
    cosine_kwargs: tuple[WarmupCosineDecay, ...] = Field(min_length=1)

    @field_validator("cosine_kwargs", mode="before")
    @classmethod
    def _tag(cls, v):
        if isinstance(v, (list, tuple)):
            return tuple({"kind": "warmup_cosine_decay", **c} if isinstance(c, dict) else c
                         for c in v)
        return v

    @field_serializer("cosine_kwargs")
    def _plain(self, cycles):
        return [{k: v for k, v in c.spec().items() if k != "kind"} for c in cycles]

    def value(self, step, xp=np):
        starts = np.cumsum([c.decay_steps for c in self.cosine_kwargs])[:-1]
        return _join(step, xp, self.cosine_kwargs, [int(s) for s in starts])


class Wsd(Schedule):
    """Warmup, stable, decay: the cooldown can branch from any point of the stable phase."""

    kind: Literal["wsd"] = "wsd"
    peak_value: float
    warmup_steps: Steps
    stable_steps: Steps
    decay_steps: PositiveSteps
    init_value: float = 0.0
    end_value: float = 0.0
    decay_type: Literal["linear", "cosine", "1-sqrt"] = "linear"

    def value(self, step, xp=np):
        warm = _polynomial(step, xp, self.init_value, self.peak_value, 1, self.warmup_steps, 0)
        start = self.warmup_steps + self.stable_steps
        t = xp.clip((step - start) / self.decay_steps, 0.0, 1.0)
        if self.decay_type == "linear":
            shape = 1.0 - t
        elif self.decay_type == "cosine":
            shape = 0.5 * (1.0 + xp.cos(xp.pi * t))
        else:
            shape = 1.0 - xp.sqrt(t)
        decay = self.end_value + (self.peak_value - self.end_value) * shape
        return xp.where(step < self.warmup_steps, warm, decay)


class Cyclic(Schedule):
    """Triangular cycles between base and max value, as torch's CyclicLR computes them."""

    kind: Literal["cyclic"] = "cyclic"
    base_value: float
    max_value: float
    step_size_up: PositiveSteps
    step_size_down: Optional[PositiveSteps] = None
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0

    def value(self, step, xp=np):
        up = float(self.step_size_up)
        total = up + float(self.step_size_down or self.step_size_up)
        ratio = up / total
        cycle = xp.floor(1 + step / total)
        x = 1.0 + step / total - cycle
        scale = xp.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        height = (self.max_value - self.base_value) * scale
        if self.mode == "triangular":
            return self.base_value + height * 1.0
        if self.mode == "triangular2":
            return self.base_value + height * (1 / (2.0 ** (cycle - 1)))
        return self.base_value + height * self.gamma**step


class ReduceOnPlateau(Schedule):
    """A value cut by ``factor`` when a reported metric stops improving (torch's ReduceLROnPlateau).

    Its position is a small state (``init_state``/``update``), not a step count, so it lives at the
    top of a hyperparameter's schedule and adapters keep and checkpoint that state.
    """

    stateful: ClassVar[bool] = True
    kind: Literal["reduce_on_plateau"] = "reduce_on_plateau"
    init_value: float
    mode: Literal["min", "max"] = "min"
    factor: Fraction = 0.1
    patience: Steps = 10
    threshold: NonNegative = 1e-4
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: Steps = 0
    min_value: NonNegative = 0.0
    eps: NonNegative = 1e-8

    def init_state(self) -> dict[str, float]:
        worst = math.inf if self.mode == "min" else -math.inf
        return {"value": self.init_value, "best": worst, "num_bad": 0, "cooldown_counter": 0,
                "count": 0}

    def update(self, state: dict, metric: Any, xp: Any = np) -> dict:
        """The state after one reported metric; a NaN metric means 'no measurement' and changes nothing."""
        best, bad, cool = state["best"], state["num_bad"], state["cooldown_counter"]
        sign = 1.0 if self.mode == "min" else -1.0
        if self.threshold_mode == "rel":
            better = sign * metric < sign * best * (1.0 - sign * self.threshold)
        else:
            better = sign * metric < sign * best - self.threshold
        best = xp.where(better, metric, best)
        bad = xp.where(better, 0, bad + 1)
        in_cooldown = cool > 0
        cool = xp.where(in_cooldown, cool - 1, cool)
        bad = xp.where(in_cooldown, 0, bad)
        reduce = bad > self.patience
        old = state["value"]
        cut = xp.maximum(old * self.factor, self.min_value)
        value = xp.where(xp.logical_and(reduce, old - cut > self.eps), cut, old)
        cool = xp.where(reduce, self.cooldown, cool)
        bad = xp.where(reduce, 0, bad)
        new = {"value": value, "best": best, "num_bad": bad, "cooldown_counter": cool,
               "count": state["count"] + 1}
        seen = xp.logical_not(xp.isnan(metric))
        return {k: xp.where(seen, new[k], state[k]) for k in new}

    def value(self, step, xp=np):
        raise TypeError("reduce_on_plateau depends on reported metrics: use value_of(state)")

    def __call__(self, step: int) -> float:
        return self.value(step)

    @staticmethod
    def value_of(state: dict) -> Any:
        return state["value"]


class Join(Schedule):
    """``schedules[i]`` runs from ``boundaries[i-1]`` on, counting its steps from that boundary
    (optax's ``join_schedules``), or with ``absolute`` from step 0: a schedule changed mid-run
    (a PBT member's explored segment) goes on where its own timeline stands."""

    kind: Literal["join"] = "join"
    schedules: tuple["StatelessSpec", ...] = Field(min_length=1)
    boundaries: tuple[Steps, ...]
    absolute: bool = False

    def spec(self) -> dict[str, Any]:
        data = super().spec()
        if not data["absolute"]:  # the optax form stays as it always was written
            del data["absolute"]
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.boundaries) != len(self.schedules) - 1:
            raise ValueError(f"boundaries: expected {len(self.schedules) - 1} (one fewer than "
                             f"schedules), got {len(self.boundaries)}")
        if list(self.boundaries) != sorted(set(self.boundaries)):
            raise ValueError(f"boundaries: expected strictly increasing steps, got "
                             f"{list(self.boundaries)}")
        return self

    def value(self, step, xp=np):
        return _join(step, xp, self.schedules, self.boundaries, self.absolute)


STATELESS_KINDS = (Constant, Linear, Polynomial, CosineDecay, ExponentialDecay, PiecewiseConstant,
                   PiecewiseInterpolate, WarmupConstant, WarmupCosineDecay, WarmupExponentialDecay,
                   LinearOnecycle, CosineOnecycle, Sgdr, Wsd, Cyclic, Join)
StatelessSpec = Annotated[Union[STATELESS_KINDS], Field(discriminator="kind")]
AnySpec = Annotated[Union[STATELESS_KINDS + (ReduceOnPlateau,)], Field(discriminator="kind")]
Join.model_rebuild()
KINDS: dict[str, type[Schedule]] = {
    cls.model_fields["kind"].default: cls for cls in STATELESS_KINDS + (ReduceOnPlateau,)}
