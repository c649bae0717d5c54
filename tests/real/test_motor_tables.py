"""Control tables and model specs against hardware.md sections 1 and 2."""

from __future__ import annotations

import pytest

from robopolicy.real.motors import dynamixel, feetech
from robopolicy.real.motors.tables import BAUDRATES, MODELS, Register, baud_index, model_by_number, model_spec

MODEL_NUMBERS = {
    "xl330-m077": 1190,
    "xl330-m288": 1200,
    "xl430-w250": 1060,
    "xm430-w350": 1020,
    "xm430-w210": 1030,
    "xm540-w270": 1120,
    "xc430-w150": 1070,
    "sts3215": 777,
    "sts3250": 2825,
}


def test_models_and_numbers():
    assert {name: spec.model_number for name, spec in MODELS.items()} == MODEL_NUMBERS
    for name, spec in MODELS.items():
        assert spec.resolution == 4096
        assert spec.protocol == ("feetech" if name.startswith("sts") else "dynamixel")
        assert spec.defaults["Model_Number"] == spec.model_number
        assert model_by_number(spec.protocol, spec.model_number) is spec
    assert model_spec("XL430-W250") is MODELS["xl430-w250"]
    with pytest.raises(KeyError, match="known models: .*sts3215"):
        model_spec("ax-12a")


@pytest.mark.parametrize(
    ("name", "address", "size", "eeprom"),
    [
        ("Model_Number", 0, 2, True),
        ("Firmware_Version", 6, 1, True),
        ("ID", 7, 1, True),
        ("Baud_Rate", 8, 1, True),
        ("Return_Delay_Time", 9, 1, True),
        ("Drive_Mode", 10, 1, True),
        ("Operating_Mode", 11, 1, True),
        ("Homing_Offset", 20, 4, True),
        ("Max_Position_Limit", 48, 4, True),
        ("Min_Position_Limit", 52, 4, True),
        ("Shutdown", 63, 1, True),
        ("Torque_Enable", 64, 1, False),
        ("Hardware_Error_Status", 70, 1, False),
        ("Bus_Watchdog", 98, 1, False),
        ("Goal_Position", 116, 4, False),
        ("Present_Position", 132, 4, False),
        ("Present_Temperature", 146, 1, False),
    ],
)
def test_dynamixel_table(name, address, size, eeprom):
    reg = model_spec("xm430-w350").register(name)
    assert (reg.address, reg.size, reg.eeprom, reg.sign_bit) == (address, size, eeprom, None)


@pytest.mark.parametrize(
    ("name", "address", "size", "eeprom", "sign_bit"),
    [
        ("Firmware_Major_Version", 0, 1, True, None),
        ("Model_Number", 3, 2, True, None),
        ("ID", 5, 1, True, None),
        ("Min_Position_Limit", 9, 2, True, None),
        ("Max_Position_Limit", 11, 2, True, None),
        ("Homing_Offset", 31, 2, True, 11),
        ("Operating_Mode", 33, 1, True, None),
        ("Torque_Enable", 40, 1, False, None),
        ("Acceleration", 41, 1, False, None),
        ("Goal_Position", 42, 2, False, 15),
        ("Goal_Velocity", 46, 2, False, 15),
        ("Lock", 55, 1, False, None),
        ("Present_Position", 56, 2, False, 15),
        ("Present_Velocity", 58, 2, False, 15),
        ("Present_Load", 60, 2, False, 10),
        ("Status", 65, 1, False, None),
    ],
)
def test_feetech_table(name, address, size, eeprom, sign_bit):
    reg = model_spec("sts3215").register(name)
    assert (reg.address, reg.size, reg.eeprom, reg.sign_bit, reg.signed) == (address, size, eeprom, sign_bit, False)


def test_signedness_and_access():
    x = model_spec("xl330-m288").registers
    assert x["Present_Position"].signed and x["Homing_Offset"].signed and not x["Min_Position_Limit"].signed
    assert x["Present_Position"].access == "r" and x["Goal_Position"].access == "rw"
    assert model_spec("sts3215").register("Present_Position").access == "r"
    assert Register(31, 2, sign_bit=11).min_value == -2047
    assert Register(0, 4, signed=True).max_value == 2**31 - 1
    with pytest.raises(ValueError, match="size"):
        Register(0, 3)
    with pytest.raises(KeyError, match="no register 'Goal_Pos'.*Goal_Position"):
        model_spec("sts3215").register("Goal_Pos")


def test_defaults_fit_their_registers():
    for spec in MODELS.values():
        codec = dynamixel if spec.protocol == "dynamixel" else feetech
        for name, value in spec.defaults.items():
            reg = spec.register(name)
            assert codec.decode_value(codec.encode_value(value, reg), reg) == value, (spec.name, name)


def test_baudrates():
    assert BAUDRATES["dynamixel"][1] == 57_600 and BAUDRATES["dynamixel"][3] == 1_000_000
    assert BAUDRATES["feetech"][0] == 1_000_000 and BAUDRATES["feetech"][4] == 115_200
    assert baud_index("feetech", 1_000_000) == 0
    assert baud_index("dynamixel", 4_000_000) == 6
    with pytest.raises(ValueError, match="supported"):
        baud_index("feetech", 2_000_000)
