"""Parameter types the `docket` commands share: a number of seconds, a TCP port and a
finite number in a range, refused as usage errors (exit 2, naming the option) instead
of being passed on to fail later with a misleading message (the eighth fresh-user
trial: `--timeout 0` was "could not read ... within 0 s: is the broker up?",
`--web-port 99999` a 70-line traceback from Faust; a later one: `docket chaos --rate
nan` a ValueError once the stack was up, `--drain-timeout -1` a run reporting events
lost, `docket api --port 70000` an OverflowError traceback)."""

from __future__ import annotations

import math
import os

import click

# A server port an option names: 1-65535 (Faust refuses 0 for its web server).
PORT = click.IntRange(1, 65535)
# A listening port where 0 asks the OS for a free one, as the port settings allow
# (app/settings.py _port): `docket api --port`, whose option and DOCKET_API_PORT must agree.
ANY_PORT = click.IntRange(0, 65535)
# A workload's seed (--seed of `chaos`, `console`, `demo`): a 64-bit integer. The
# workload's idempotency keys hold it (chaos/workload.py, "ik-<seed>-<i>"), and a seed of
# 120 digits made keys past their 128 characters, refused as rejections (the tenth
# fresh-user trial); 64 bits keep every key under 50 characters.
SEED = click.IntRange(-(2**63), 2**63 - 1)


class FiniteRange(click.FloatRange):
    """A click.FloatRange that refuses nan and inf as well: nan compares false with
    every bound, so a FloatRange lets it through whatever its bounds, and inf passes any
    range without a maximum."""

    def convert(self, value, param, ctx) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number in the range {self._describe_range()}.", param, ctx)
        return number


class Seconds(click.ParamType):
    """A finite number of seconds, above 0 (or at least 0 with ``zero_ok``, for a wait
    that may be none). nan, inf and negative values are refused."""

    name = "seconds"

    def __init__(self, zero_ok: bool = False) -> None:
        self.zero_ok = zero_ok

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        least = "0 or more" if self.zero_ok else "more than 0"
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not self.zero_ok):
            self.fail(f"{value!r} is not a number of seconds {least}", param, ctx)
        return seconds


class EnvOption(click.Option):
    """A click.Option whose usage error names its environment variable when the value
    came from it: click says "Invalid value for '--rate'" either way, and a user who
    never typed --rate (DOCKET_CONSOLE_RATE=abc) was left to guess (the twelfth
    fresh-user trial). Use with ``envvar=``."""

    def process_value(self, ctx: click.Context, value):
        try:
            return super().process_value(ctx, value)
        except click.BadParameter as exc:
            from click.core import ParameterSource

            if ctx.get_parameter_source(self.name) is ParameterSource.ENVIRONMENT and isinstance(self.envvar, str):
                exc.message = f"{self.envvar}={os.environ.get(self.envvar, '')!r}: {exc.message}"
            raise
