"""Control tables and model specs for Dynamixel X-series (Protocol 2.0) and Feetech STS/SMS (protocol 0) servos.

Register names follow lerobot's tables (``Present_Position``, ``Goal_Position``, ``Torque_Enable`` ...), so
calibration files and robot descriptions written for lerobot read the same registers here. Addresses and sizes
are in bytes; values are raw register integers (ticks, 0.1 V, ...). Defaults are the factory values an emulator
seeds (from the ROBOTIS e-manual / Feetech memory tables; voltage/gain defaults are representative).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DYNAMIXEL = "dynamixel"
FEETECH = "feetech"
PROTOCOLS = (DYNAMIXEL, FEETECH)


@dataclass(frozen=True)
class Register:
    """One control-table item: ``address``/``size`` in bytes and how its value is encoded."""

    address: int
    size: int  # bytes
    sign_bit: int | None = None  # Feetech sign-magnitude bit (15 pos/vel, 11 homing, 10 load); None = unsigned
    signed: bool = False  # Dynamixel two's complement
    eeprom: bool = False  # EEPROM area: write needs torque off (Feetech: also Lock = 0)
    access: str = "rw"  # "r" (read-only) or "rw"

    def __post_init__(self) -> None:
        if self.size not in (1, 2, 4):
            raise ValueError(f"register size must be 1, 2 or 4 bytes, got {self.size}")
        if self.access not in ("r", "rw"):
            raise ValueError(f"register access must be 'r' or 'rw', got {self.access!r}")
        if self.sign_bit is not None and not 0 <= self.sign_bit < 8 * self.size:
            raise ValueError(f"sign bit {self.sign_bit} does not fit a {self.size}-byte register")

    def check(self, value: int) -> int:
        """`value` as an int, or ValueError if the register cannot hold it."""
        value = int(value)
        if not self.min_value <= value <= self.max_value:
            raise ValueError(f"value {value} does not fit register @{self.address} ({self.size} bytes, range "
                             f"{self.min_value}..{self.max_value})")
        return value

    @property
    def min_value(self) -> int:
        """Smallest value the register can hold."""
        if self.sign_bit is not None:
            return -((1 << self.sign_bit) - 1)
        if self.signed:
            return -(1 << (8 * self.size - 1))
        return 0

    @property
    def max_value(self) -> int:
        """Largest value the register can hold."""
        if self.sign_bit is not None:
            return (1 << self.sign_bit) - 1
        if self.signed:
            return (1 << (8 * self.size - 1)) - 1
        return (1 << (8 * self.size)) - 1


@dataclass(frozen=True)
class ModelSpec:
    """A servo model: protocol, model number (the PING reply), resolution and its control table."""

    name: str  # "xl430-w250", "sts3215", ...
    protocol: str  # "dynamixel" | "feetech"
    model_number: int
    resolution: int  # ticks per revolution
    registers: Mapping[str, Register]
    defaults: Mapping[str, int] = field(default_factory=dict)  # factory register values by name

    def register(self, name: str) -> Register:
        """The register called ``name``; KeyError listing the known names otherwise."""
        try:
            return self.registers[name]
        except KeyError:
            known = ", ".join(sorted(self.registers))
            raise KeyError(f"model {self.name} has no register {name!r}; known registers: {known}") from None


def _table(entries: dict[str, Register]) -> Mapping[str, Register]:
    return MappingProxyType(entries)


# ---------------------------------------------------------------- Dynamixel X-series (e-manual, lerobot names)


def _dxl(address: int, size: int, *, signed: bool = False, access: str = "rw") -> Register:
    return Register(address, size, signed=signed, eeprom=address < 64, access=access)


X_SERIES_CONTROL_TABLE = _table(
    {
        # EEPROM (0..63): write only with torque off, else Access Error (7)
        "Model_Number": _dxl(0, 2, access="r"),
        "Model_Information": _dxl(2, 4, access="r"),
        "Firmware_Version": _dxl(6, 1, access="r"),
        "ID": _dxl(7, 1),
        "Baud_Rate": _dxl(8, 1),
        "Return_Delay_Time": _dxl(9, 1),
        "Drive_Mode": _dxl(10, 1),
        "Operating_Mode": _dxl(11, 1),
        "Secondary_ID": _dxl(12, 1),
        "Protocol_Type": _dxl(13, 1),
        "Homing_Offset": _dxl(20, 4, signed=True),
        "Moving_Threshold": _dxl(24, 4),
        "Temperature_Limit": _dxl(31, 1),
        "Max_Voltage_Limit": _dxl(32, 2),
        "Min_Voltage_Limit": _dxl(34, 2),
        "PWM_Limit": _dxl(36, 2),
        "Current_Limit": _dxl(38, 2),
        "Acceleration_Limit": _dxl(40, 4),
        "Velocity_Limit": _dxl(44, 4),
        "Max_Position_Limit": _dxl(48, 4),
        "Min_Position_Limit": _dxl(52, 4),
        "Shutdown": _dxl(63, 1),
        # RAM
        "Torque_Enable": _dxl(64, 1),
        "LED": _dxl(65, 1),
        "Status_Return_Level": _dxl(68, 1),
        "Registered_Instruction": _dxl(69, 1, access="r"),
        "Hardware_Error_Status": _dxl(70, 1, access="r"),
        "Velocity_I_Gain": _dxl(76, 2),
        "Velocity_P_Gain": _dxl(78, 2),
        "Position_D_Gain": _dxl(80, 2),
        "Position_I_Gain": _dxl(82, 2),
        "Position_P_Gain": _dxl(84, 2),
        "Feedforward_2nd_Gain": _dxl(88, 2),
        "Feedforward_1st_Gain": _dxl(90, 2),
        "Bus_Watchdog": _dxl(98, 1, signed=True),  # 1..127 x 20 ms; reads -1 after it fired
        "Goal_PWM": _dxl(100, 2, signed=True),
        "Goal_Current": _dxl(102, 2, signed=True),
        "Goal_Velocity": _dxl(104, 4, signed=True),
        "Profile_Acceleration": _dxl(108, 4),
        "Profile_Velocity": _dxl(112, 4),
        "Goal_Position": _dxl(116, 4, signed=True),
        "Realtime_Tick": _dxl(120, 2, access="r"),
        "Moving": _dxl(122, 1, access="r"),
        "Moving_Status": _dxl(123, 1, access="r"),
        "Present_PWM": _dxl(124, 2, signed=True, access="r"),
        "Present_Current": _dxl(126, 2, signed=True, access="r"),
        "Present_Velocity": _dxl(128, 4, signed=True, access="r"),
        "Present_Position": _dxl(132, 4, signed=True, access="r"),
        "Velocity_Trajectory": _dxl(136, 4, signed=True, access="r"),
        "Position_Trajectory": _dxl(140, 4, signed=True, access="r"),
        "Present_Input_Voltage": _dxl(144, 2, access="r"),
        "Present_Temperature": _dxl(146, 1, access="r"),
    }
)

_X_COMMON_DEFAULTS = {
    "Model_Information": 0,
    "ID": 1,
    "Baud_Rate": 1,  # 57600
    "Return_Delay_Time": 250,  # 2 us units
    "Drive_Mode": 0,
    "Operating_Mode": 3,  # position
    "Secondary_ID": 255,
    "Protocol_Type": 2,
    "Homing_Offset": 0,
    "Moving_Threshold": 10,
    "Temperature_Limit": 80,
    "PWM_Limit": 885,
    "Acceleration_Limit": 32767,
    "Max_Position_Limit": 4095,
    "Min_Position_Limit": 0,
    "Shutdown": 52,  # overheating | electrical shock | overload
    "Torque_Enable": 0,
    "LED": 0,
    "Status_Return_Level": 2,
    "Registered_Instruction": 0,
    "Hardware_Error_Status": 0,
    "Velocity_I_Gain": 1920,
    "Velocity_P_Gain": 100,
    "Position_D_Gain": 0,
    "Position_I_Gain": 0,
    "Position_P_Gain": 800,
    "Feedforward_2nd_Gain": 0,
    "Feedforward_1st_Gain": 0,
    "Bus_Watchdog": 0,
    "Goal_Current": 0,
    "Goal_Velocity": 0,
    "Profile_Acceleration": 0,
    "Profile_Velocity": 0,
    "Present_Temperature": 30,
}


def _x_model(
    name: str,
    model_number: int,
    *,
    max_voltage: int,
    min_voltage: int,
    current_limit: int,
    velocity_limit: int,
    volts: int,
    firmware: int = 46,
    position_p: int = 800,
) -> ModelSpec:
    defaults = dict(_X_COMMON_DEFAULTS)
    defaults.update(
        Model_Number=model_number,
        Firmware_Version=firmware,
        Max_Voltage_Limit=max_voltage,
        Min_Voltage_Limit=min_voltage,
        Current_Limit=current_limit,
        Velocity_Limit=velocity_limit,
        Goal_PWM=defaults["PWM_Limit"],
        Position_P_Gain=position_p,
        Present_Input_Voltage=volts,
    )
    return ModelSpec(name, DYNAMIXEL, model_number, 4096, X_SERIES_CONTROL_TABLE, MappingProxyType(defaults))


# ---------------------------------------------------------------- Feetech STS/SMS (protocol 0)

_FEETECH_SIGN_BITS = {
    "Homing_Offset": 11,
    "Goal_Position": 15,
    "Goal_Velocity": 15,
    "Present_Position": 15,
    "Present_Velocity": 15,
    "Present_Load": 10,
}


def _sts(name: str, address: int, size: int, *, access: str = "rw") -> tuple[str, Register]:
    # 0..39 is EEPROM, 80.. the factory area (also EEPROM); 40..79 SRAM
    eeprom = address < 40 or address >= 80
    return name, Register(address, size, sign_bit=_FEETECH_SIGN_BITS.get(name), eeprom=eeprom, access=access)


STS_SMS_SERIES_CONTROL_TABLE = _table(
    dict(
        [
            # EEPROM: write needs torque off and Lock = 0
            _sts("Firmware_Major_Version", 0, 1, access="r"),
            _sts("Firmware_Minor_Version", 1, 1, access="r"),
            _sts("Model_Number", 3, 2, access="r"),
            _sts("ID", 5, 1),
            _sts("Baud_Rate", 6, 1),
            _sts("Return_Delay_Time", 7, 1),
            _sts("Response_Status_Level", 8, 1),
            _sts("Min_Position_Limit", 9, 2),
            _sts("Max_Position_Limit", 11, 2),
            _sts("Max_Temperature_Limit", 13, 1),
            _sts("Max_Voltage_Limit", 14, 1),
            _sts("Min_Voltage_Limit", 15, 1),
            _sts("Max_Torque_Limit", 16, 2),
            _sts("Phase", 18, 1),
            _sts("Unloading_Condition", 19, 1),
            _sts("LED_Alarm_Condition", 20, 1),
            _sts("P_Coefficient", 21, 1),
            _sts("D_Coefficient", 22, 1),
            _sts("I_Coefficient", 23, 1),
            _sts("Minimum_Startup_Force", 24, 2),
            _sts("CW_Dead_Zone", 26, 1),
            _sts("CCW_Dead_Zone", 27, 1),
            _sts("Protection_Current", 28, 2),
            _sts("Angular_Resolution", 30, 1),
            _sts("Homing_Offset", 31, 2),
            _sts("Operating_Mode", 33, 1),
            _sts("Protective_Torque", 34, 1),
            _sts("Protection_Time", 35, 1),
            _sts("Overload_Torque", 36, 1),
            _sts("Velocity_closed_loop_P_proportional_coefficient", 37, 1),
            _sts("Over_Current_Protection_Time", 38, 1),
            _sts("Velocity_closed_loop_I_integral_coefficient", 39, 1),
            # SRAM
            _sts("Torque_Enable", 40, 1),
            _sts("Acceleration", 41, 1),
            _sts("Goal_Position", 42, 2),
            _sts("Goal_Time", 44, 2),
            _sts("Goal_Velocity", 46, 2),
            _sts("Torque_Limit", 48, 2),
            _sts("Lock", 55, 1),
            _sts("Present_Position", 56, 2, access="r"),
            _sts("Present_Velocity", 58, 2, access="r"),
            _sts("Present_Load", 60, 2, access="r"),
            _sts("Present_Voltage", 62, 1, access="r"),
            _sts("Present_Temperature", 63, 1, access="r"),
            _sts("Status", 65, 1, access="r"),
            _sts("Moving", 66, 1, access="r"),
            _sts("Present_Current", 69, 2, access="r"),
            # factory area
            _sts("Moving_Velocity_Threshold", 80, 1),
            _sts("DTs", 81, 1),
            _sts("Velocity_Unit_factor", 82, 1),
            _sts("Hts", 83, 1),
            _sts("Maximum_Velocity_Limit", 84, 1),
            _sts("Maximum_Acceleration", 85, 1),
            _sts("Acceleration_Multiplier", 86, 1),
        ]
    )
)

_STS_COMMON_DEFAULTS = {
    "Firmware_Major_Version": 3,
    "Firmware_Minor_Version": 10,
    "ID": 1,
    "Baud_Rate": 0,  # 1 Mbps
    "Return_Delay_Time": 250,
    "Response_Status_Level": 1,
    "Min_Position_Limit": 0,
    "Max_Position_Limit": 4095,
    "Max_Temperature_Limit": 70,
    "Max_Torque_Limit": 1000,
    "Phase": 12,
    "Unloading_Condition": 44,
    "LED_Alarm_Condition": 47,
    "P_Coefficient": 32,
    "D_Coefficient": 32,
    "I_Coefficient": 0,
    "Minimum_Startup_Force": 16,
    "CW_Dead_Zone": 1,
    "CCW_Dead_Zone": 1,
    "Protection_Current": 500,
    "Angular_Resolution": 1,
    "Homing_Offset": 0,
    "Operating_Mode": 0,
    "Protective_Torque": 20,
    "Protection_Time": 200,
    "Overload_Torque": 80,
    "Velocity_closed_loop_P_proportional_coefficient": 10,
    "Over_Current_Protection_Time": 200,
    "Velocity_closed_loop_I_integral_coefficient": 200,
    "Torque_Enable": 0,
    "Acceleration": 0,
    "Goal_Time": 0,
    "Goal_Velocity": 0,
    "Torque_Limit": 1000,
    "Lock": 1,
    "Present_Temperature": 30,
    "Moving_Velocity_Threshold": 2,
    "DTs": 32,
    "Velocity_Unit_factor": 1,
    "Hts": 0,
    "Maximum_Velocity_Limit": 254,
    "Maximum_Acceleration": 254,
    "Acceleration_Multiplier": 0,
}


def _sts_model(name: str, model_number: int, *, max_voltage: int, min_voltage: int, volts: int) -> ModelSpec:
    defaults = dict(_STS_COMMON_DEFAULTS)
    defaults.update(
        Model_Number=model_number, Max_Voltage_Limit=max_voltage, Min_Voltage_Limit=min_voltage, Present_Voltage=volts
    )
    return ModelSpec(name, FEETECH, model_number, 4096, STS_SMS_SERIES_CONTROL_TABLE, MappingProxyType(defaults))


# name, model number, Max/Min_Voltage_Limit (0.1 V), Current_Limit, Velocity_Limit, Position_P_Gain, supply (0.1 V)
_X_MODELS = (
    ("xl330-m077", 1190, 70, 35, 1750, 1023, 400, 50),
    ("xl330-m288", 1200, 70, 35, 1750, 445, 400, 50),
    ("xl430-w250", 1060, 140, 60, 0, 265, 640, 120),
    ("xm430-w350", 1020, 160, 95, 1193, 200, 800, 120),
    ("xm430-w210", 1030, 160, 95, 1193, 330, 800, 120),
    ("xm540-w270", 1120, 160, 95, 2047, 128, 800, 120),
    ("xc430-w150", 1070, 140, 65, 0, 460, 640, 120),
)
# name, model number, Max/Min_Voltage_Limit (0.1 V), supply (0.1 V)
_STS_MODELS = (
    ("sts3215", 777, 80, 40, 74),
    ("sts3250", 2825, 140, 40, 120),
)

MODELS: dict[str, ModelSpec] = {
    **{
        name: _x_model(
            name,
            number,
            max_voltage=vmax,
            min_voltage=vmin,
            current_limit=cur,
            velocity_limit=vel,
            position_p=pp,
            volts=volts,
        )
        for name, number, vmax, vmin, cur, vel, pp, volts in _X_MODELS
    },
    **{
        name: _sts_model(name, number, max_voltage=vmax, min_voltage=vmin, volts=volts)
        for name, number, vmax, vmin, volts in _STS_MODELS
    },
}

BAUDRATES: dict[str, dict[int, int]] = {
    DYNAMIXEL: {0: 9_600, 1: 57_600, 2: 115_200, 3: 1_000_000, 4: 2_000_000, 5: 3_000_000, 6: 4_000_000},
    FEETECH: {0: 1_000_000, 1: 500_000, 2: 250_000, 3: 128_000, 4: 115_200, 5: 57_600, 6: 38_400, 7: 19_200},
}


def model_spec(name: str) -> ModelSpec:
    """The spec of model ``name`` (case-insensitive, e.g. "sts3215", "XL430-W250")."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown servo model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def model_by_number(protocol: str, model_number: int) -> ModelSpec | None:
    """The model of ``protocol`` whose PING reply is ``model_number``, or None if unknown."""
    for spec in MODELS.values():
        if spec.protocol == protocol and spec.model_number == model_number:
            return spec
    return None


def baud_index(protocol: str, baudrate: int) -> int:
    """The Baud_Rate register value for ``baudrate`` (ValueError listing the supported rates)."""
    table = BAUDRATES[protocol]
    for index, baud in table.items():
        if baud == baudrate:
            return index
    raise ValueError(f"{protocol} servos do not support {baudrate} baud; supported: {sorted(table.values())}")
