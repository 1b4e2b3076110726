"""Hypothesis strategies for valid schedule specs of every stateless kind, within given ranges.

One generator serves the spec tests (wide ranges: any magnitude a hyperparameter can take) and
the optax parity tests (ranges where float32 agrees with float64); only the `Ranges` differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

Strategy = st.SearchStrategy


@dataclass(frozen=True)
class Ranges:
    value: Strategy  # any init/peak/end value
    steps: Strategy  # a begin or a length that may be 0
    lengths: Strategy  # a length of at least 1
    warmup: Strategy  # warmup_steps of warmup_cosine_decay (and sgdr cycles)
    decay_span: int  # their decay_steps run up to warmup_steps + decay_span
    exponent: Strategy  # polynomial power, cosine exponents
    alpha: Strategy  # cosine_decay's alpha
    rate: Strategy  # exponential decay_rate (> 1: growth)
    positive: Strategy  # base and end_value of an exponential growth
    div_factor: Strategy
    final_div_factor: Strategy
    pct_start: Strategy  # cosine_onecycle
    linear_pct: tuple[float, float, float, float]  # pct_start from, to; pct_final gap, to
    scales: Strategy  # boundaries_and_scales
    join_bound: int  # join boundaries up to this step


def kind(name: str, required: dict, optional: dict | None = None) -> Strategy:
    return st.fixed_dictionaries({"kind": st.just(name), **required}, optional=optional or {})


def stateless_specs(r: Ranges) -> dict[str, Strategy]:
    """A strategy per stateless kind but join (see `joins`)."""

    @st.composite
    def warmup_cosine_kwargs(draw) -> dict:
        warmup = draw(r.warmup)
        return draw(st.fixed_dictionaries(
            {"init_value": r.value, "peak_value": r.value, "warmup_steps": st.just(warmup),
             "decay_steps": st.integers(warmup + 1, warmup + r.decay_span)},
            optional={"end_value": r.value, "exponent": r.exponent}))

    @st.composite
    def linear_onecycle(draw) -> dict:
        spec = draw(kind("linear_onecycle", {"transition_steps": r.lengths, "peak_value": r.value},
                         {"div_factor": r.div_factor, "final_div_factor": r.final_div_factor}))
        if draw(st.booleans()):  # both fractions given, else both defaults (0.3, 0.85)
            start_from, start_to, gap, final_to = r.linear_pct
            spec["pct_start"] = draw(st.floats(start_from, start_to))
            spec["pct_final"] = draw(st.floats(spec["pct_start"] + gap, final_to, exclude_min=True))
        return spec

    @st.composite
    def exponential(draw, name: str, base: str, **required) -> dict:
        """Decay, or growth (rate > 1) of a positive ``base`` value up to a positive end_value.

        Growth from zero or from a negative value never reaches end_value (optax runs on to NaN
        or -inf there; this library refuses such specs), so those are left out.
        """
        rate = draw(r.rate)
        growth = {base: r.positive, "end_value": r.positive} if rate > 1.0 else {}
        return draw(kind(name, {base: r.value, **required, **growth,
                                "transition_steps": r.lengths, "decay_rate": st.just(rate)},
                         {"transition_begin": r.steps, "staircase": st.booleans(),
                          **({} if growth else {"end_value": st.none() | r.value})}))

    value, steps = r.value, r.steps
    return {
        "constant": kind("constant", {"value": value}),
        "linear": kind("linear", {"init_value": value, "end_value": value,
                                  "transition_steps": steps}, {"transition_begin": steps}),
        "polynomial": kind("polynomial", {"init_value": value, "end_value": value,
                                          "power": r.exponent, "transition_steps": steps},
                           {"transition_begin": steps}),
        "cosine_decay": kind("cosine_decay", {"init_value": value, "decay_steps": r.lengths},
                             {"alpha": r.alpha, "exponent": r.exponent}),
        "exponential_decay": exponential("exponential_decay", "init_value"),
        "piecewise_constant": kind("piecewise_constant", {"init_value": value,
                                                          "boundaries_and_scales": r.scales}),
        "piecewise_interpolate": kind("piecewise_interpolate", {
            "interpolate_type": st.sampled_from(["linear", "cosine"]), "init_value": value,
            "boundaries_and_scales": r.scales}),
        "warmup_constant": kind("warmup_constant", {"init_value": value, "peak_value": value,
                                                    "warmup_steps": steps}),
        "warmup_cosine_decay": warmup_cosine_kwargs().map(
            lambda kw: {"kind": "warmup_cosine_decay", **kw}),
        "warmup_exponential_decay": exponential("warmup_exponential_decay", "peak_value",
                                                init_value=value, warmup_steps=steps),
        "linear_onecycle": linear_onecycle(),
        "cosine_onecycle": kind("cosine_onecycle", {"transition_steps": r.lengths,
                                                    "peak_value": value},
                                {"pct_start": r.pct_start, "div_factor": r.div_factor,
                                 "final_div_factor": r.final_div_factor}),
        "sgdr": st.lists(warmup_cosine_kwargs(), min_size=1, max_size=3).map(
            lambda cycles: {"kind": "sgdr", "cosine_kwargs": cycles}),
        "wsd": kind("wsd", {"peak_value": value, "warmup_steps": steps, "stable_steps": steps,
                            "decay_steps": r.lengths},
                    {"init_value": value, "end_value": value,
                     "decay_type": st.sampled_from(["linear", "cosine", "1-sqrt"])}),
        "cyclic": kind("cyclic", {"base_value": value, "max_value": value,
                                  "step_size_up": r.lengths},
                       {"step_size_down": st.none() | r.lengths,
                        "mode": st.sampled_from(["triangular", "triangular2", "exp_range"]),
                        "gamma": st.floats(1e-3, 1.0)}),
    }


def joins(parts: Strategy, r: Ranges) -> Strategy:
    """A join of one to four specs drawn from `parts`, at sorted distinct boundaries."""

    @st.composite
    def join(draw) -> dict:
        schedules_ = draw(st.lists(parts, min_size=1, max_size=4))
        bounds = draw(st.lists(st.integers(0, r.join_bound), min_size=len(schedules_) - 1,
                               max_size=len(schedules_) - 1, unique=True))
        return {"kind": "join", "schedules": schedules_, "boundaries": sorted(bounds)}

    return join()
