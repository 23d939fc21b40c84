"""Typed settings for each driver; the daemon's config loader (configschema) builds them from [device].

One dataclass per driver type rather than one bag of optional keys, so a misspelt or
misplaced setting is rejected when the daemon starts instead of silently ignored at the
gate.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class InputMap:
    """Which peer input (OSDP input number, relay-board input, GPIO line offset) carries
    which signal; None when the installation has no such signal."""

    passage: int | None = None
    door_forced: int | None = None
    fire_alarm: int | None = None
    tamper: int | None = None

    def __post_init__(self) -> None:
        used = [n for n in dataclasses.astuple(self) if n is not None]
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in used):
            raise ValueError(f"input numbers must be non-negative integers: {self}")
        if len(used) != len(set(used)):
            raise ValueError(f"two signals share one input: {self}")

    def named(self) -> dict[int, str]:
        """input number -> signal name, for the configured signals only."""
        return {n: name for name, n in dataclasses.asdict(self).items() if n is not None}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class OsdpConfig:
    """Gate as OSDP control panel, turnstile controller as PD; secure channel always on."""

    TYPE: ClassVar[str] = "osdp"
    port: str
    scbk_file: str  # 16-byte secure channel base key, 32 hex digits, file mode 0600
    address: int = 0
    baudrate: int = 9600
    entry_output: int = 0
    exit_output: int | None = None  # None: one lock relay for both directions
    unlock_pulse_ms: int = 5000
    inputs: InputMap = field(default_factory=lambda: InputMap(passage=0))
    reader: int = 0  # reader number for LED, buzzer and text commands
    led_number: int = 0
    command_timeout_s: float = 1.0
    offline_after_s: float = 0.5  # PD silent this long -> offline (it answers every poll)
    reconnect_interval_s: float = 1.0
    connect_timeout_s: float = 3.0
    keypad_timeout_s: float = 10.0  # a PIN not ended with '#' within this is dropped

    def __post_init__(self) -> None:
        _require(0 <= self.address <= 126, f"OSDP address must be 0..126, got {self.address}")
        _require(self.unlock_pulse_ms > 0, "unlock_pulse_ms must be positive")
        _require(self.entry_output >= 0 and (self.exit_output or 0) >= 0, "outputs must be >= 0")
        for name in ("command_timeout_s", "offline_after_s", "reconnect_interval_s",
                     "connect_timeout_s", "keypad_timeout_s"):
            _require(getattr(self, name) > 0, f"{name} must be positive")


@dataclass(frozen=True)
class RelayConfig:
    """A serial relay board speaking the protocol in devices.relay_protocol."""

    TYPE: ClassVar[str] = "relay"
    port: str
    baudrate: int = 115200
    entry_relay: int = 0
    exit_relay: int | None = None
    green_relay: int | None = None
    red_relay: int | None = None
    buzzer_relay: int | None = None
    unlock_pulse_ms: int = 5000
    inputs: InputMap = field(default_factory=lambda: InputMap(passage=0))
    reply_timeout_s: float = 0.1
    retries: int = 2  # extra attempts after the first
    poll_interval_s: float = 0.05
    connect_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        relays = [r for r in (self.entry_relay, self.exit_relay, self.green_relay,
                              self.red_relay, self.buzzer_relay) if r is not None]
        _require(all(0 <= r < 256 for r in relays), "relay numbers must be 0..255")
        _require(len(relays) == len(set(relays)), "each relay may serve one purpose only")
        _require(all(n < 8 for n in self.inputs.named()), "the relay board has inputs 0..7")
        _require(0 < self.unlock_pulse_ms <= 0xFFFF, "unlock_pulse_ms must be 1..65535")
        _require(self.retries >= 0, "retries must be >= 0")
        for name in ("reply_timeout_s", "poll_interval_s", "connect_timeout_s"):
            _require(getattr(self, name) > 0, f"{name} must be positive")


@dataclass(frozen=True)
class GpioConfig:
    """Relays and sensors wired straight to a Linux GPIO chip (line offsets)."""

    TYPE: ClassVar[str] = "gpio"
    chip: str = "/dev/gpiochip0"
    entry_line: int = 0
    exit_line: int | None = None
    green_line: int | None = None
    red_line: int | None = None
    buzzer_line: int | None = None
    inputs: InputMap = field(default_factory=InputMap)
    outputs_active_low: bool = False
    inputs_active_low: bool = False
    input_debounce_ms: int = 10
    unlock_pulse_ms: int = 5000

    def __post_init__(self) -> None:
        outputs = [n for n in (self.entry_line, self.exit_line, self.green_line,
                               self.red_line, self.buzzer_line) if n is not None]
        lines = outputs + list(self.inputs.named())
        _require(all(n >= 0 for n in lines), "line offsets must be >= 0")
        _require(len(lines) == len(set(lines)), "each GPIO line may serve one purpose only")
        _require(self.unlock_pulse_ms > 0, "unlock_pulse_ms must be positive")
        _require(self.input_debounce_ms >= 0, "input_debounce_ms must be >= 0")


@dataclass(frozen=True)
class SimConfig:
    """Simulated turnstile for the demo and benchmarks."""

    TYPE: ClassVar[str] = "sim"
    unlock_pulse_ms: int = 5000
    auto_passage_ms: int | None = None  # emit PassageComplete this long after each unlock
    ack_delay_ms: float = 0.0  # simulated command round trip
    command_timeout_s: float = 0.2  # how long a command waits when the sim stops answering

    def __post_init__(self) -> None:
        _require(self.unlock_pulse_ms > 0, "unlock_pulse_ms must be positive")
        _require(self.auto_passage_ms is None or self.auto_passage_ms >= 0,
                 "auto_passage_ms must be >= 0")
        _require(self.ack_delay_ms >= 0 and self.command_timeout_s > 0, "bad sim timings")


DriverConfig = OsdpConfig | RelayConfig | GpioConfig | SimConfig
CONFIG_TYPES: dict[str, type] = {
    c.TYPE: c for c in (OsdpConfig, RelayConfig, GpioConfig, SimConfig)}

