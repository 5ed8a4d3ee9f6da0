"""The ``fleet`` section: signed downlink commands and OTA updates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .checks import PATH, integer, list_of, number, text
from .schema import FieldSpec, Schema


def _check_topic(v: str) -> None:
    if not v or "+" in v or "#" in v or "\0" in v or "" in v.split("/"):
        raise ValueError()


FLEET_SCHEMA = Schema((
    FieldSpec("command_keys", list_of(PATH), [], path=True, must_exist=True,
              help="head-end public keys (Ed25519 PEM) whose signed downlink commands are "
                   "obeyed; none = downlink commands disabled"),
    FieldSpec("release_keys", list_of(PATH), [], path=True, must_exist=True,
              help="release public keys (Ed25519 PEM) trusted to sign OTA bundles"),
    FieldSpec("topic", text('an MQTT topic without "+" or "#"', validate=_check_topic), None,
              help="fleet-wide command topic; default {topic_prefix}/fleet/down/cmd"),
    FieldSpec("releases_dir", PATH, None, path=True,
              help="A/B release root holding releases/A, releases/B and the current symlink "
                   "(e.g. /opt/gateway); none = OTA disabled"),
    FieldSpec("state_dir", PATH, None, path=True,
              help="trial, outcome and download state; default: fleet/ next to the store"),
    FieldSpec("health_deadline_s", number(gt=0, le=3600, what="a number of seconds"), 120,
              help="a new release/config/certificate must pass its health checks within this"),
    FieldSpec("health_settle_s", number(ge=0, le=600, what="a number of seconds"), 10,
              help="drivers must stay up this long (broker reached) to count as healthy"),
    FieldSpec("max_start_attempts", integer(1, 20), 3,
              help="starts a new release gets before the launcher rolls it back"),
    FieldSpec("reboot_command", list_of(text(), min_items=1), ["systemctl", "reboot"],
              help="argv run by the reboot command with mode: system"),
    FieldSpec("max_seq_jump", integer(1, 2**62), 86_400_000,
              help="a command's seq may be at most this far past the larger of the last "
                   "accepted seq and the gateway clock in ms (default one day of ms-time "
                   "seqs), so one command cannot lock the downlink"),
), help="fleet management: signed downlink commands, OTA updates")


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The ``fleet:`` section (see FLEET_SCHEMA); the defaults equal the schema's."""

    command_keys: tuple[str, ...] = ()
    release_keys: tuple[str, ...] = ()
    topic: str | None = None
    releases_dir: str | None = None
    state_dir: str | None = None
    health_deadline_s: float = 120
    health_settle_s: float = 10
    max_start_attempts: int = 3
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    max_seq_jump: int = 86_400_000

    @classmethod
    def from_values(cls, v: Mapping[str, Any]) -> "FleetConfig":
        v = {**FLEET_SCHEMA.defaults(), **v}
        return cls(**{**v, **{k: tuple(v[k]) for k in
                              ("command_keys", "release_keys", "reboot_command")}})
