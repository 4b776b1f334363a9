# Started from the sila2 code generator's skeleton; the behaviour below is ours (a simulated instrument).
"""CellExpansionController: a simulated cell-expansion bioreactor behind the generated SiLA 2 feature.

One background tick (every 0.1 s of wall time) moves the shared `Culture` forward by the elapsed wall
time multiplied by the time compression, and pushes changed values to the observable properties.
`RunExpansion` seeds the culture and then only watches it, reporting progress until the planned duration
has passed. Faults are injected per server (`fault`) or per run (a marker in the BatchId).
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, time as time_of_day, timedelta, timezone
from typing import TYPE_CHECKING, Optional

from culture import Culture
from sila2.framework import UndefinedExecutionError
from sila2.framework.data_types.date import SilaDateType
from sila2.server import MetadataDict, ObservableCommandInstanceWithIntermediateResponses

from ..generated.cellexpansioncontroller import (
    CellExpansionControllerBase,
    ContaminationDetected,
    CountSample_Responses,
    InstrumentBusy,
    RunExpansion_IntermediateResponses,
    RunExpansion_Responses,
    SetTemperatureSetpoint_Responses,
)

if TYPE_CHECKING:
    from ..server import Server

TICK_SECONDS = 0.1
# When the (simulated) counter was last calibrated: fixed, with a UTC offset, so that a client's reading can be checked.
LAST_CALIBRATION = datetime(2026, 11, 30, 9, 15, 30, 250000, tzinfo=timezone(timedelta(hours=1)))
FAULT_AT_PROGRESS = 0.5  # injected faults strike half-way through a run
FAULTS = ("contamination", "sensor-failure")
BATCH_MARKERS = {"CONTAMINATED": "contamination", "SENSORFAIL": "sensor-failure"}


class CellExpansionControllerImpl(CellExpansionControllerBase):
    def __init__(
        self,
        parent_server: Server,
        time_compression: float = 3600.0,
        fault: Optional[str] = None,
        first_intermediate_after: float = 0.0,
        first_count_after: float = 0.0,
    ) -> None:
        super().__init__(parent_server=parent_server)
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}, expected one of {FAULTS}")
        self.time_compression = time_compression  # process seconds per wall-clock second
        self.fault = fault
        # A slow measurement: wall-clock seconds before a run's first intermediate response.
        self.first_intermediate_after = first_intermediate_after
        # A slow answer: wall-clock seconds before the first CountSample returns.
        self.first_count_after = first_count_after
        self._counts = 0
        # Finished runs stay queryable (RunExpansion_Info / _Result) for 30 minutes.
        self.RunExpansion_default_lifetime_of_execution = timedelta(minutes=30)

        self._lock = threading.Lock()
        self._culture = Culture()
        self._running = False
        self._stopping = threading.Event()
        self._last_tick = time.monotonic()
        self._published: dict = {}
        self.update_InstrumentState("Idle")
        self._publish()
        self.run_periodically(self._tick, delay_seconds=TICK_SECONDS)

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    # ---------------------------------------------------------------- simulation clock

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._culture.advance((now - self._last_tick) * self.time_compression / 3600.0)
            self._last_tick = now
        self._publish()

    def _publish(self) -> None:
        """Pushes observable property values that changed visibly since the last push."""
        with self._lock:
            values = {
                "CurrentTemperature": round(self._culture.temperature_c, 2),
                "ViableCellDensity": round(self._culture.density, 3),
            }
        for name, value in values.items():
            if self._published.get(name) != value:
                self._published[name] = value
                getattr(self, f"update_{name}")(value)

    # ---------------------------------------------------------------- properties and commands

    def get_TemperatureSetpoint(self, *, metadata: MetadataDict) -> float:
        with self._lock:
            return self._culture.setpoint_c

    def get_LastCalibration(self, *, metadata: MetadataDict) -> datetime:
        return LAST_CALIBRATION

    def CountSample(self, DrawnOn: SilaDateType, DrawnAt: time_of_day, *, metadata: MetadataDict) -> CountSample_Responses:
        # The drawing time comes back as one timestamp in the zone the time of day was given in, so a
        # client can see that its Date and Time parameters arrived as it meant them.
        drawn_at = datetime.combine(DrawnOn.date, DrawnAt.replace(tzinfo=None), tzinfo=DrawnAt.tzinfo)
        with self._lock:
            self._counts += 1
            n = self._counts
        print(f"SAMPLE-COUNT-STARTED n={n}", file=sys.stderr, flush=True)
        if n == 1 and self.first_count_after > 0:
            self._stopping.wait(self.first_count_after)
        with self._lock:
            count = (round(self._culture.density, 4), round(self._culture.viability_pct, 2), drawn_at)
        print(f"SAMPLE-COUNTED density={count[0]} viability={count[1]} drawn_at={drawn_at.isoformat()}", file=sys.stderr, flush=True)
        return CountSample_Responses(Count=count)

    def SetTemperatureSetpoint(
        self, TemperatureSetpoint: float, *, metadata: MetadataDict
    ) -> SetTemperatureSetpoint_Responses:
        # The 30..40 degC range is a constraint in the feature definition: sila2 has already rejected
        # anything outside it with a ValidationError before this is called.
        with self._lock:
            self._culture.setpoint_c = TemperatureSetpoint
        return SetTemperatureSetpoint_Responses()

    def RunExpansion(
        self,
        DurationHours: float,
        TargetDensity: float,
        BatchId: str,
        *,
        metadata: MetadataDict,
        instance: ObservableCommandInstanceWithIntermediateResponses[RunExpansion_IntermediateResponses],
    ) -> RunExpansion_Responses:
        # DurationHours (0 < d <= 336), TargetDensity (0 < x <= 50) and BatchId (1..64 chars) are checked by
        # sila2 against the feature definition's constraints when the command is initiated.
        # One line per execution, for tests that count how often a command was started.
        print(f"RUN-EXPANSION-INITIATED batch={BatchId}", file=sys.stderr, flush=True)
        with self._lock:
            if self._running:
                raise InstrumentBusy(f"Batch {BatchId!r} cannot start: another expansion run is in progress")
            self._running = True
            self._culture.seed(DurationHours, TargetDensity)
        fault = next((kind for marker, kind in BATCH_MARKERS.items() if marker in BatchId.upper()), self.fault)
        instance.begin_execution()
        self.update_InstrumentState("Running")
        try:
            result = self._watch_run(instance, DurationHours, BatchId, fault)
        except BaseException:
            self.update_InstrumentState("Faulted")
            raise
        finally:
            with self._lock:
                self._running = False
        self.update_InstrumentState("Completed")
        return result

    def _watch_run(self, instance, duration_h: float, batch_id: str, fault: Optional[str]) -> RunExpansion_Responses:
        if self._stopping.wait(self.first_intermediate_after):
            raise UndefinedExecutionError(f"Batch {batch_id}: the instrument server is shutting down; run aborted")
        while not self._stopping.wait(TICK_SECONDS):
            with self._lock:
                culture = self._culture
                progress, remaining_h = culture.progress, culture.remaining_h
                density, temperature = culture.density, culture.temperature_c
                faulted = fault is not None and progress >= FAULT_AT_PROGRESS
                if faulted:
                    culture.halt(contaminated=fault == "contamination")
            if faulted and fault == "contamination":
                raise ContaminationDetected(
                    f"Batch {batch_id}: microbial contamination detected at {progress * duration_h:.1f} h "
                    f"of {duration_h:g} h (dissolved oxygen and pH fell abruptly); run stopped"
                )
            if faulted:  # not an error of the FDL: sila2 sends it as an undefined execution error
                raise RuntimeError(f"Batch {batch_id}: temperature probe signal lost; run stopped")

            instance.progress = progress
            instance.estimated_remaining_time = timedelta(seconds=remaining_h * 3600.0 / self.time_compression)
            instance.send_intermediate_response(RunExpansion_IntermediateResponses(density, temperature))
            if progress >= 1.0:
                with self._lock:
                    return RunExpansion_Responses(
                        FinalViableCellDensity=culture.density,
                        Viability=culture.viability_pct,
                        FoldExpansion=culture.fold_expansion,
                    )
        raise UndefinedExecutionError(f"Batch {batch_id}: the instrument server is shutting down; run aborted")
