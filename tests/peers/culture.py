"""A simulated T-cell culture in a closed bioreactor, shared by the SiLA 2 and OPC UA instrument peers.

Plain Python, no I/O and no clock: the peers call `advance(hours)` with the process time that has passed
(wall time multiplied by their time compression) and read the state back. Not a validated process model:
just enough behaviour that a client sees values move the way an operator would expect.

- Temperature eases towards the setpoint (first-order lag, time constant 0.3 h).
- Viable cell density grows logistically, fastest at 37 degC; a run is tuned so that at 37 degC it reaches
  the target density when the planned duration ends (a real culture is not so obliging).
- pH (lactate) and dissolved oxygen fall as the culture approaches its capacity; viability drops slightly
  with crowding and sharply after a contamination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AMBIENT_C = 25.0
DEFAULT_SETPOINT_C = 37.0
TEMPERATURE_TIME_CONSTANT_H = 0.3
MAX_STEP_H = 0.05  # integration step, so coarse ticks at high time compression stay stable


@dataclass
class Culture:
    setpoint_c: float = DEFAULT_SETPOINT_C
    temperature_c: float = AMBIENT_C
    density: float = 0.0  # viable cells, 10^6 cells/mL; 0 while no culture is loaded
    seeding_density: float = 0.0
    capacity: float = 0.0  # density the culture levels off at
    growth_rate_per_h: float = 0.0  # logistic rate at 37 degC
    duration_h: float = 0.0
    elapsed_h: float = 0.0
    growing: bool = False
    contaminated: bool = False

    def seed(self, duration_h: float, target_density: float) -> None:
        """Loads a fresh culture and starts growing it for `duration_h` hours of process time."""
        self.seeding_density = min(0.5, target_density / 4)
        self.capacity = 1.5 * target_density
        # Logistic x(t) = K / (1 + a e^(-rt)) with a = (K - x0) / x0; solve x(duration) = target for r.
        a = (self.capacity - self.seeding_density) / self.seeding_density
        self.growth_rate_per_h = math.log(a * (target_density / (self.capacity - target_density))) / duration_h
        self.density = self.seeding_density
        self.duration_h = duration_h
        self.elapsed_h = 0.0
        self.growing = True
        self.contaminated = False

    def advance(self, hours: float) -> None:
        """Moves the culture `hours` of process time forward."""
        while hours > 1e-12:
            step = min(hours, MAX_STEP_H)
            if self.growing:
                step = min(step, self.duration_h - self.elapsed_h)
            self._step(step)
            hours -= step
            if self.growing and self.elapsed_h >= self.duration_h - 1e-9:
                self.elapsed_h = self.duration_h
                self.growing = False
            if step <= 0:
                break

    def _step(self, hours: float) -> None:
        self.temperature_c += (self.setpoint_c - self.temperature_c) * (
            1 - math.exp(-hours / TEMPERATURE_TIME_CONSTANT_H)
        )
        if self.growing:
            # Exact logistic step for the rate at this step's temperature.
            rate = self.growth_rate_per_h * self.temperature_factor()
            a = (self.capacity - self.density) / self.density
            self.density = self.capacity / (1 + a * math.exp(-rate * hours))
            self.elapsed_h += hours

    def temperature_factor(self) -> float:
        """Relative growth rate: 1 at 37 degC, falling off either side (0.4 at 39.5, 0.004 at 30)."""
        return math.exp(-(((self.temperature_c - 37.0) / 2.6) ** 2))

    def halt(self, contaminated: bool = False) -> None:
        """Stops the run early (operator stop, or a fault)."""
        self.growing = False
        self.contaminated = self.contaminated or contaminated

    @property
    def progress(self) -> float:
        return 0.0 if self.duration_h <= 0 else min(1.0, self.elapsed_h / self.duration_h)

    @property
    def remaining_h(self) -> float:
        return max(0.0, self.duration_h - self.elapsed_h)

    @property
    def _crowding(self) -> float:
        return 0.0 if self.capacity <= 0 else self.density / self.capacity

    @property
    def viability_pct(self) -> float:
        if self.density <= 0:
            return 0.0
        viability = 96.0 - 8.0 * self._crowding**2
        return viability - 35.0 if self.contaminated else viability

    @property
    def fold_expansion(self) -> float:
        return 0.0 if self.seeding_density <= 0 else self.density / self.seeding_density

    @property
    def ph(self) -> float:
        """Falls from 7.40 as lactate accumulates; faster with contamination."""
        return 7.40 - 0.35 * self._crowding - (0.3 if self.contaminated else 0.0)

    @property
    def dissolved_oxygen_pct(self) -> float:
        """Percent of air saturation; the cells' oxygen uptake outpaces the gassing as they grow."""
        return 95.0 - 55.0 * self._crowding - (25.0 if self.contaminated else 0.0)
