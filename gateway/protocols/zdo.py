"""Zigbee Device Objects (profile 0x0000, endpoint 0): the few ZDP messages a meter
concentrator needs. Sans-I/O. Reference: Zigbee specification (05-3474) 2.4.3 / 2.4.4.

Every ZDP frame starts with a transaction sequence number; integers are little-endian.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

ZDO_PROFILE = 0x0000
ZDO_ENDPOINT = 0x00


class ZDODecodeError(ValueError):
    """The bytes are not a valid ZDP message: a remote-side protocol error."""


# Cluster id -> name (Zigbee spec Table 2.51/2.52; responses are request | 0x8000).
ZDO_CLUSTERS: dict[int, str] = {
    0x0000: "NWK_addr_req", 0x0001: "IEEE_addr_req", 0x0002: "Node_Desc_req",
    0x0004: "Simple_Desc_req", 0x0005: "Active_EP_req", 0x0006: "Match_Desc_req",
    0x0013: "Device_annce", 0x0021: "Bind_req", 0x0022: "Unbind_req",
    0x0031: "Mgmt_Lqi_req", 0x0034: "Mgmt_Leave_req", 0x0036: "Mgmt_Permit_Joining_req",
    0x8000: "NWK_addr_rsp", 0x8001: "IEEE_addr_rsp", 0x8002: "Node_Desc_rsp",
    0x8004: "Simple_Desc_rsp", 0x8005: "Active_EP_rsp", 0x8006: "Match_Desc_rsp",
    0x8021: "Bind_rsp", 0x8022: "Unbind_rsp", 0x8031: "Mgmt_Lqi_rsp",
    0x8034: "Mgmt_Leave_rsp", 0x8036: "Mgmt_Permit_Joining_rsp",
}
SIMPLE_DESC_REQ = 0x0004
SIMPLE_DESC_RSP = 0x8004
ACTIVE_EP_REQ = 0x0005
ACTIVE_EP_RSP = 0x8005
DEVICE_ANNCE = 0x0013
BIND_REQ = 0x0021
BIND_RSP = 0x8021
MGMT_LQI_REQ = 0x0031
MGMT_LQI_RSP = 0x8031
MGMT_PERMIT_JOINING_REQ = 0x0036
MGMT_PERMIT_JOINING_RSP = 0x8036

# ZDP status (Zigbee spec Table 2.137).
ZDO_STATUS: dict[int, str] = {
    0x00: "SUCCESS", 0x80: "INV_REQUESTTYPE", 0x81: "DEVICE_NOT_FOUND",
    0x82: "INVALID_EP", 0x83: "NOT_ACTIVE", 0x84: "NOT_SUPPORTED", 0x85: "TIMEOUT",
    0x86: "NO_MATCH", 0x88: "NO_ENTRY", 0x89: "NO_DESCRIPTOR",
    0x8A: "INSUFFICIENT_SPACE", 0x8B: "NOT_PERMITTED", 0x8C: "TABLE_FULL",
    0x8D: "NOT_AUTHORIZED",
}

# MAC capability flags of Device_annce (IEEE 802.15.4 7.3.1.2).
CAPABILITY_BITS: dict[int, str] = {0: "alternate_pan_coordinator", 1: "full_function_device",
                                   2: "mains_powered", 3: "rx_on_when_idle",
                                   6: "security_capable", 7: "allocate_address"}


def capability_names(cap: int) -> list[str]:
    return [n for bit, n in CAPABILITY_BITS.items() if cap & (1 << bit)]


def _need(data: bytes, n: int, what: str) -> None:
    if len(data) < n:
        raise ZDODecodeError(f"truncated {what}: {len(data)} bytes, need {n}")


@dataclass(frozen=True, slots=True)
class DeviceAnnounce:
    """Device_annce (2.4.3.1.11): a device joined or rejoined; its NWK address may change."""

    CLUSTER: ClassVar[int] = DEVICE_ANNCE
    seq: int
    nwk: int
    ieee: int
    capability: int

    def serialize(self) -> bytes:
        return bytes((self.seq,)) + self.nwk.to_bytes(2, "little") \
            + self.ieee.to_bytes(8, "little") + bytes((self.capability,))

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["DeviceAnnounce", bytes]:
        _need(data, 12, "Device_annce")
        return cls(data[0], int.from_bytes(data[1:3], "little"),
                   int.from_bytes(data[3:11], "little"), data[11]), bytes(data[12:])


@dataclass(frozen=True, slots=True)
class BindRequest:
    """Bind_req (2.4.3.2.2) with a 64-bit destination (address mode 0x03): tells the device
    to send its reports of ``cluster`` to us."""

    CLUSTER: ClassVar[int] = BIND_REQ
    seq: int
    src_ieee: int
    src_endpoint: int
    cluster: int
    dst_ieee: int
    dst_endpoint: int

    def serialize(self) -> bytes:
        return bytes((self.seq,)) + self.src_ieee.to_bytes(8, "little") \
            + bytes((self.src_endpoint,)) + self.cluster.to_bytes(2, "little") + b"\x03" \
            + self.dst_ieee.to_bytes(8, "little") + bytes((self.dst_endpoint,))

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["BindRequest", bytes]:
        _need(data, 13, "Bind_req")
        if data[12] != 0x03:
            raise ZDODecodeError(f"Bind_req address mode 0x{data[12]:02X} is not 0x03 (IEEE)")
        _need(data, 22, "Bind_req")
        return cls(data[0], int.from_bytes(data[1:9], "little"), data[9],
                   int.from_bytes(data[10:12], "little"),
                   int.from_bytes(data[13:21], "little"), data[21]), bytes(data[22:])


@dataclass(frozen=True, slots=True)
class PermitJoiningRequest:
    """Mgmt_Permit_Joining_req (2.4.3.3.7): open the network for ``duration`` s (0 closes,
    255 = until closed)."""

    CLUSTER: ClassVar[int] = MGMT_PERMIT_JOINING_REQ
    seq: int
    duration: int
    tc_significance: int = 1

    def serialize(self) -> bytes:
        return bytes((self.seq, self.duration, self.tc_significance))

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["PermitJoiningRequest", bytes]:
        _need(data, 3, "Mgmt_Permit_Joining_req")
        return cls(data[0], data[1], data[2]), bytes(data[3:])


@dataclass(frozen=True, slots=True)
class ActiveEpRequest:
    """Active_EP_req (2.4.3.1.6): which endpoints does the device at ``nwk`` have?"""

    CLUSTER: ClassVar[int] = ACTIVE_EP_REQ
    seq: int
    nwk: int

    def serialize(self) -> bytes:
        return bytes((self.seq,)) + self.nwk.to_bytes(2, "little")

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["ActiveEpRequest", bytes]:
        _need(data, 3, "Active_EP_req")
        return cls(data[0], int.from_bytes(data[1:3], "little")), bytes(data[3:])


@dataclass(frozen=True, slots=True)
class ActiveEpResponse:
    """Active_EP_rsp (2.4.4.2.6): status, the device's NWK address and its endpoints."""

    CLUSTER: ClassVar[int] = ACTIVE_EP_RSP
    seq: int
    status: int
    nwk: int
    endpoints: tuple[int, ...]

    def serialize(self) -> bytes:
        return bytes((self.seq, self.status)) + self.nwk.to_bytes(2, "little") \
            + bytes((len(self.endpoints), *self.endpoints))

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["ActiveEpResponse", bytes]:
        _need(data, 2, "Active_EP_rsp")
        if data[1] != 0:  # a refusal may stop after the status
            nwk = int.from_bytes(data[2:4], "little") if len(data) >= 4 else 0
            return cls(data[0], data[1], nwk, ()), b""
        _need(data, 5, "Active_EP_rsp")
        n = data[4]
        _need(data, 5 + n, f"Active_EP_rsp with {n} endpoints")
        return cls(data[0], 0, int.from_bytes(data[2:4], "little"),
                   tuple(data[5:5 + n])), bytes(data[5 + n:])


@dataclass(frozen=True, slots=True)
class SimpleDescRequest:
    """Simple_Desc_req (2.4.3.1.5): the profile and clusters of one endpoint."""

    CLUSTER: ClassVar[int] = SIMPLE_DESC_REQ
    seq: int
    nwk: int
    endpoint: int

    def serialize(self) -> bytes:
        return bytes((self.seq,)) + self.nwk.to_bytes(2, "little") + bytes((self.endpoint,))

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["SimpleDescRequest", bytes]:
        _need(data, 4, "Simple_Desc_req")
        return cls(data[0], int.from_bytes(data[1:3], "little"), data[3]), bytes(data[4:])


@dataclass(frozen=True, slots=True)
class SimpleDescResponse:
    """Simple_Desc_rsp (2.4.4.2.5) with its simple descriptor (2.3.2.5)."""

    CLUSTER: ClassVar[int] = SIMPLE_DESC_RSP
    seq: int
    status: int
    nwk: int
    endpoint: int = 0
    profile: int = 0
    device_id: int = 0
    version: int = 0
    in_clusters: tuple[int, ...] = ()
    out_clusters: tuple[int, ...] = ()

    def serialize(self) -> bytes:
        head = bytes((self.seq, self.status)) + self.nwk.to_bytes(2, "little")
        if self.status != 0:
            return head + b"\x00"
        d = bytes((self.endpoint,)) + self.profile.to_bytes(2, "little") \
            + self.device_id.to_bytes(2, "little") + bytes((self.version & 0x0F,)) \
            + bytes((len(self.in_clusters),)) \
            + b"".join(c.to_bytes(2, "little") for c in self.in_clusters) \
            + bytes((len(self.out_clusters),)) \
            + b"".join(c.to_bytes(2, "little") for c in self.out_clusters)
        return head + bytes((len(d),)) + d

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["SimpleDescResponse", bytes]:
        _need(data, 2, "Simple_Desc_rsp")
        if data[1] != 0:
            nwk = int.from_bytes(data[2:4], "little") if len(data) >= 4 else 0
            return cls(data[0], data[1], nwk), b""
        _need(data, 5, "Simple_Desc_rsp")
        length = data[4]
        _need(data, 5 + length, "Simple_Desc_rsp descriptor")
        d = bytes(data[5:5 + length])
        _need(d, 7, "simple descriptor")
        n_in = d[6]
        _need(d, 8 + 2 * n_in, "simple descriptor input clusters")
        ins = tuple(int.from_bytes(d[7 + 2 * i:9 + 2 * i], "little") for i in range(n_in))
        p = 7 + 2 * n_in
        n_out = d[p]
        _need(d, p + 1 + 2 * n_out, "simple descriptor output clusters")
        outs = tuple(int.from_bytes(d[p + 1 + 2 * i:p + 3 + 2 * i], "little")
                     for i in range(n_out))
        return cls(data[0], 0, int.from_bytes(data[2:4], "little"), d[0],
                   int.from_bytes(d[1:3], "little"), int.from_bytes(d[3:5], "little"),
                   d[5] & 0x0F, ins, outs), bytes(data[5 + length:])


@dataclass(frozen=True, slots=True)
class LqiRequest:
    """Mgmt_Lqi_req (2.4.3.3.2): a page of the receiver's neighbor table from ``start``."""

    CLUSTER: ClassVar[int] = MGMT_LQI_REQ
    seq: int
    start: int = 0

    def serialize(self) -> bytes:
        return bytes((self.seq, self.start))

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["LqiRequest", bytes]:
        _need(data, 2, "Mgmt_Lqi_req")
        return cls(data[0], data[1]), bytes(data[2:])


DEVICE_TYPES = {0: "coordinator", 1: "router", 2: "end_device", 3: "unknown"}
RELATIONSHIPS = {0: "parent", 1: "child", 2: "sibling", 3: "none", 4: "previous_child"}


@dataclass(frozen=True, slots=True)
class Neighbor:
    """One neighbor table record (Table 2.128, 22 bytes): ``lqi`` is the link quality the
    table's owner measures for this neighbor (0-255, higher is better)."""

    extended_pan: int
    ieee: int
    nwk: int
    device_type: int
    rx_on_when_idle: int
    relationship: int
    permit_joining: int
    depth: int
    lqi: int

    SIZE: ClassVar[int] = 22

    def serialize(self) -> bytes:
        return self.extended_pan.to_bytes(8, "little") + self.ieee.to_bytes(8, "little") \
            + self.nwk.to_bytes(2, "little") + bytes((
                self.device_type & 3 | (self.rx_on_when_idle & 3) << 2
                | (self.relationship & 7) << 4, self.permit_joining & 3, self.depth, self.lqi))

    @classmethod
    def deserialize(cls, d: bytes) -> "Neighbor":
        flags = d[18]
        return cls(int.from_bytes(d[0:8], "little"), int.from_bytes(d[8:16], "little"),
                   int.from_bytes(d[16:18], "little"), flags & 3, flags >> 2 & 3,
                   flags >> 4 & 7, d[19] & 3, d[20], d[21])


@dataclass(frozen=True, slots=True)
class LqiResponse:
    """Mgmt_Lqi_rsp (2.4.4.3.2): ``total`` entries in the table, ``neighbors`` from
    ``start``; a caller pages on with start + len(neighbors) while that is below total."""

    CLUSTER: ClassVar[int] = MGMT_LQI_RSP
    seq: int
    status: int
    total: int
    start: int
    neighbors: tuple[Neighbor, ...]

    def serialize(self) -> bytes:
        return bytes((self.seq, self.status, self.total, self.start, len(self.neighbors))) \
            + b"".join(n.serialize() for n in self.neighbors)

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["LqiResponse", bytes]:
        _need(data, 2, "Mgmt_Lqi_rsp")
        if data[1] != 0:  # a refusal carries no table fields
            return cls(data[0], data[1], 0, 0, ()), bytes(data[2:])
        _need(data, 5, "Mgmt_Lqi_rsp")
        count = data[4]
        end = 5 + count * Neighbor.SIZE
        _need(data, end, f"Mgmt_Lqi_rsp with {count} neighbors")
        if data[3] + count > data[2]:
            raise ZDODecodeError(f"Mgmt_Lqi_rsp: entries {data[3]}..{data[3] + count - 1} "
                                 f"beyond the table's {data[2]}")
        return cls(data[0], 0, data[2], data[3], tuple(
            Neighbor.deserialize(data[i:i + Neighbor.SIZE])
            for i in range(5, end, Neighbor.SIZE))), bytes(data[end:])


@dataclass(frozen=True, slots=True)
class StatusResponse:
    """Any response made of a sequence number and a status (Bind_rsp, Mgmt_*_rsp...)."""

    seq: int
    status: int

    def serialize(self) -> bytes:
        return bytes((self.seq, self.status))

    @classmethod
    def deserialize(cls, data: bytes) -> tuple["StatusResponse", bytes]:
        _need(data, 2, "ZDP response")
        return cls(data[0], data[1]), bytes(data[2:])


# Cluster -> message class, for the messages this module models.
ZDO_MESSAGES: dict[int, Any] = {
    DEVICE_ANNCE: DeviceAnnounce, BIND_REQ: BindRequest,
    MGMT_PERMIT_JOINING_REQ: PermitJoiningRequest,
    MGMT_LQI_REQ: LqiRequest, MGMT_LQI_RSP: LqiResponse,
    ACTIVE_EP_REQ: ActiveEpRequest, ACTIVE_EP_RSP: ActiveEpResponse,
    SIMPLE_DESC_REQ: SimpleDescRequest, SIMPLE_DESC_RSP: SimpleDescResponse,
    BIND_RSP: StatusResponse, 0x8022: StatusResponse, 0x8034: StatusResponse,
    MGMT_PERMIT_JOINING_RSP: StatusResponse,
}


def parse_zdo(cluster: int, data: bytes) -> Any:
    """A ZDP message of a modelled cluster, or None for clusters this module ignores."""
    cls = ZDO_MESSAGES.get(cluster)
    if cls is None:
        return None
    msg, _rest = cls.deserialize(bytes(data))
    return msg


def cluster_name(cluster: int) -> str:
    return ZDO_CLUSTERS.get(cluster, f"0x{cluster:04X}")
