"""Our codecs against the vendor SDKs (dynamixel_sdk, scservo_sdk) as independent oracles.

The SDKs get a fake port handler that records what they write and serves the status packets our codec builds,
so both directions are checked: SDK instruction bytes == ours, and the SDK decodes our status packets.
"""

from __future__ import annotations

import pytest

from robopolicy.real.motors import dynamixel as dxl
from robopolicy.real.motors import feetech as ft
from robopolicy.real.motors.tables import model_spec

dynamixel_sdk = pytest.importorskip("dynamixel_sdk", reason="pip install dynamixel-sdk (the 'real' extra)")
scservo_sdk = pytest.importorskip("scservo_sdk", reason="pip install feetech-servo-sdk (the 'real' extra)")


class RecordingPort:
    """Stands in for the SDKs' PortHandler (its camelCase method names): records writes, serves queued reply
    bytes, never waits."""

    def __init__(self, baudrate: int = 1_000_000) -> None:
        self.is_using = False
        self.baudrate = baudrate
        self.written: list[bytes] = []
        self.rx = bytearray()

    def queue(self, data: bytes) -> None:
        self.rx += data

    def clearPort(self) -> None:
        pass

    def writePort(self, packet) -> int:
        self.written.append(bytes(packet))
        return len(packet)

    def readPort(self, length: int) -> bytes:
        out = bytes(self.rx[:length])
        del self.rx[:length]
        return out

    def setPacketTimeout(self, packet_length) -> None:
        pass

    def setPacketTimeoutMillis(self, msec) -> None:
        pass

    def isPacketTimeout(self) -> bool:
        return True

    def getBaudRate(self) -> int:
        return self.baudrate


def le(value: int, size: int) -> list[int]:
    return list(value.to_bytes(size, "little", signed=value < 0))


# ------------------------------------------------------------------------------------------------ Dynamixel


@pytest.fixture
def dxl_sdk():
    return RecordingPort(), dynamixel_sdk.PacketHandler(2.0)


def test_dynamixel_ping_and_reply(dxl_sdk):
    port, ph = dxl_sdk
    port.queue(dxl.status_packet(1, 0, (1030).to_bytes(2, "little") + bytes([38])))
    model, result, error = ph.ping(port, 1)
    assert port.written == [dxl.ping(1)]
    assert (model, result, error) == (1030, dynamixel_sdk.COMM_SUCCESS, 0)


@pytest.mark.parametrize("value", [0, 166, 2079, -1, -4096, 2**31 - 1])
def test_dynamixel_read4(dxl_sdk, value):
    port, ph = dxl_sdk
    reg = model_spec("xl430-w250").register("Present_Position")
    port.queue(dxl.status_packet(3, 0, dxl.encode_value(value, reg)))
    raw, result, error = ph.read4ByteTxRx(port, 3, 132)
    assert port.written == [dxl.read(3, 132, 4)]
    assert result == dynamixel_sdk.COMM_SUCCESS and error == 0
    assert raw == value & 0xFFFFFFFF  # the SDK returns unsigned


@pytest.mark.parametrize(("address", "size", "value"), [(64, 1, 1), (116, 4, 512), (116, 4, -300), (102, 2, 1750)])
def test_dynamixel_write(dxl_sdk, address, size, value):
    port, ph = dxl_sdk
    port.queue(dxl.status_packet(1, 0))
    write = {1: ph.write1ByteTxRx, 2: ph.write2ByteTxRx, 4: ph.write4ByteTxRx}[size]
    result, error = write(port, 1, address, value & ((1 << (8 * size)) - 1))
    assert result == dynamixel_sdk.COMM_SUCCESS and error == 0
    assert port.written == [dxl.write(1, address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))]


def test_dynamixel_stuffing_vs_sdk(dxl_sdk):
    """The SDK's RX unstuffing reads our stuffed status packets. Its TX stuffing is a no-op in dynamixel_sdk 4.x
    (addStuffing rebinds a local list and txPacket discards the return value), so it sends the unstuffed frame;
    ours follows the e-manual vector (LEN 9 -> 10), which hardware.md confirms."""
    port, ph = dxl_sdk
    reg = model_spec("xm430-w350").register("Present_Position")
    data = bytes.fromhex("FF FF FD 00")
    port.queue(dxl.status_packet(1, 0, data))
    raw, result, error = ph.read4ByteTxRx(port, 1, 132)
    assert result == dynamixel_sdk.COMM_SUCCESS and error == 0
    assert raw == int.from_bytes(data, "little") and dxl.decode_value(data, reg) == raw
    port.written.clear()
    port.queue(dxl.status_packet(1, 0))
    ph.writeTxRx(port, 1, 116, 4, list(data))
    assert dxl.write(1, 116, data) == bytes.fromhex("FF FF FD 00 01 0A 00 03 74 00 FF FF FD FD 00 21 E7")
    unstuffed_head = dxl.HEADER + bytes.fromhex("01 09 00 03 74 00 FF FF FD 00")
    crc = dxl.checksum(unstuffed_head)
    assert port.written == [unstuffed_head + bytes((crc & 0xFF, crc >> 8))]


def test_dynamixel_status_error_byte_reaches_sdk(dxl_sdk):
    port, ph = dxl_sdk
    port.queue(dxl.status_packet(1, 0x80 | 7))
    result, error = ph.write1ByteTxRx(port, 1, 8, 3)
    assert result == dynamixel_sdk.COMM_SUCCESS and error == 0x87


def test_dynamixel_sync_read(dxl_sdk):
    port, ph = dxl_sdk
    group = dynamixel_sdk.GroupSyncRead(port, ph, 132, 4)
    ids = [1, 2, 3, 4, 5, 6]
    for i in ids:
        assert group.addParam(i)
    for i in ids:
        port.queue(dxl.status_packet(i, 0, (100 * i - 350).to_bytes(4, "little", signed=True)))
    assert group.txRxPacket() == dynamixel_sdk.COMM_SUCCESS
    assert port.written == [dxl.sync_read(132, 4, ids)]
    assert [group.getData(i, 132, 4) for i in ids] == [(100 * i - 350) & 0xFFFFFFFF for i in ids]


def test_dynamixel_sync_write(dxl_sdk):
    port, ph = dxl_sdk
    group = dynamixel_sdk.GroupSyncWrite(port, ph, 116, 4)
    values = {1: 150, 2: 170, 3: -20, 4: 4095, 5: 0, 6: 2048}
    for i, v in values.items():
        assert group.addParam(i, le(v, 4))
    assert group.txPacket() == dynamixel_sdk.COMM_SUCCESS
    reg = model_spec("xl330-m288").register("Goal_Position")
    assert port.written == [dxl.sync_write(116, 4, {i: dxl.encode_value(v, reg) for i, v in values.items()})]


def test_dynamixel_bulk_and_misc(dxl_sdk):
    port, ph = dxl_sdk
    group = dynamixel_sdk.GroupBulkRead(port, ph)
    group.addParam(1, 144, 2)
    group.addParam(2, 146, 1)
    group.txPacket()
    port.is_using = False  # the SDK expects the bulk read replies next; we only compare TX bytes
    port.queue(dxl.status_packet(1, 0))
    ph.action(port, 1)
    port.queue(dxl.status_packet(1, 0))
    ph.reboot(port, 1)
    port.queue(dxl.status_packet(1, 0))
    ph.factoryReset(port, 1, 0x01)
    port.queue(dxl.status_packet(1, 0))
    ph.regWriteTxRx(port, 1, 104, 4, le(200, 4))
    assert port.written == [
        dxl.bulk_read([(1, 144, 2), (2, 146, 1)]),
        dxl.action(1),
        dxl.reboot(1),
        dxl.factory_reset(1, 0x01),
        dxl.reg_write(1, 104, (200).to_bytes(4, "little")),
    ]


# ------------------------------------------------------------------------------------------------ Feetech


@pytest.fixture
def ft_sdk():
    return RecordingPort(), scservo_sdk.PacketHandler(0)


def test_feetech_ping_and_reply(ft_sdk):
    port, ph = ft_sdk
    port.queue(ft.status_packet(1, 0))
    port.queue(ft.status_packet(1, 0, (777).to_bytes(2, "little")))  # the SDK reads Model_Number after the ping
    model, result, error = ph.ping(port, 1)
    assert (model, result, error) == (777, scservo_sdk.COMM_SUCCESS, 0)
    assert port.written == [ft.ping(1), ft.read(1, 3, 2)]


@pytest.mark.parametrize("value", [0, 1304, 2048, 4095, -100])
def test_feetech_read2(ft_sdk, value):
    port, ph = ft_sdk
    reg = model_spec("sts3215").register("Present_Position")
    port.queue(ft.status_packet(4, 0, ft.encode_value(value, reg)))
    raw, result, error = ph.read2ByteTxRx(port, 4, 56)
    assert port.written == [ft.read(4, 56, 2)]
    assert result == scservo_sdk.COMM_SUCCESS and error == 0
    assert raw == int.from_bytes(ft.encode_value(value, reg), "little")


@pytest.mark.parametrize(("address", "size", "value"), [(40, 1, 1), (42, 2, 2048), (55, 1, 0), (31, 2, 0x0AC5)])
def test_feetech_write(ft_sdk, address, size, value):
    port, ph = ft_sdk
    port.queue(ft.status_packet(2, 0))
    write = {1: ph.write1ByteTxRx, 2: ph.write2ByteTxRx}[size]
    result, error = write(port, 2, address, value)
    assert result == scservo_sdk.COMM_SUCCESS and error == 0
    assert port.written == [ft.write(2, address, value.to_bytes(size, "little"))]


def test_feetech_status_error_reaches_sdk(ft_sdk):
    port, ph = ft_sdk
    port.queue(ft.status_packet(2, 0b100100))
    result, error = ph.write1ByteTxRx(port, 2, 40, 1)
    assert result == scservo_sdk.COMM_SUCCESS and error == 0b100100


def test_feetech_sync_read(ft_sdk):
    port, ph = ft_sdk
    reg = model_spec("sts3215").register("Present_Position")
    group = scservo_sdk.GroupSyncRead(port, ph, 56, 2)
    ids = [1, 2, 3, 4, 5, 6]
    for i in ids:
        assert group.addParam(i)
    for i in ids:
        port.queue(ft.status_packet(i, 0, ft.encode_value(300 * i, reg)))
    assert group.txRxPacket() == scservo_sdk.COMM_SUCCESS
    assert port.written == [ft.sync_read(56, 2, ids)]
    assert [group.getData(i, 56, 2) for i in ids] == [300 * i for i in ids]


def test_feetech_sync_write(ft_sdk):
    port, ph = ft_sdk
    reg = model_spec("sts3215").register("Goal_Position")
    group = scservo_sdk.GroupSyncWrite(port, ph, 42, 2)
    values = {1: 2048, 2: 0, 3: 4095, 4: -5, 5: 1000, 6: 3000}
    for i, v in values.items():
        assert group.addParam(i, list(ft.encode_value(v, reg)))
    assert group.txPacket() == scservo_sdk.COMM_SUCCESS
    assert port.written == [ft.sync_write(42, 2, {i: ft.encode_value(v, reg) for i, v in values.items()})]


def test_feetech_action_and_reg_write(ft_sdk):
    port, ph = ft_sdk
    ph.action(port, ft.BROADCAST_ID)
    port.queue(ft.status_packet(1, 0))
    ph.regWriteTxRx(port, 1, 42, 2, [0x00, 0x08])
    assert port.written == [ft.action(), ft.reg_write(1, 42, bytes([0x00, 0x08]))]
