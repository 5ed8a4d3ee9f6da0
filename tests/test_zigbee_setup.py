"""The Zigbee device set-up state machine (gateway.drivers.zigbee_setup): pure, no driver."""

from __future__ import annotations

from gateway.drivers.zigbee_setup import (AC, METERING, TRANSITIONS, DeviceSetup, Effect,
                                          Outcome, Step)


def _run(setup: DeviceSetup, answers: dict[Step, Outcome]) -> list[Step]:
    """Answer every pending step (OK unless told); the steps that were asked."""
    asked = []
    while (step := setup.pending()) is not None:
        asked.append(step)
        assert setup.on(step, answers.get(step, Outcome.OK)) is Effect.ADVANCE
    return asked


def test_a_device_with_ac_that_accepts_everything_reports_on_both_clusters():
    s = DeviceSetup()
    asked = _run(s, {})
    assert asked == [st for st in Step if st is not Step.READY]
    assert s.ready and s.has_ac
    assert s.reporting == {METERING: "configured", AC: "configured"}
    assert s.polled_clusters() == []


def test_no_ac_skips_its_bind_and_configure_and_a_known_endpoint_skips_discovery():
    s = DeviceSetup(endpoint_configured=True)
    asked = _run(s, {Step.AC_SCALE: Outcome.UNUSABLE})
    assert asked == [Step.METERING_SCALE, Step.AC_SCALE, Step.BASIC, Step.BIND_METERING,
                     Step.CONFIGURE_METERING]
    assert s.has_ac is False and s.reporting == {METERING: "configured"}


def test_a_refused_bind_polls_that_cluster_without_configuring_it():
    s = DeviceSetup(endpoint_configured=True)
    asked = _run(s, {Step.BIND_METERING: Outcome.REFUSED, Step.CONFIGURE_AC: Outcome.NO_ANSWER})
    assert Step.CONFIGURE_METERING not in asked and Step.CONFIGURE_AC in asked
    assert s.reporting == {METERING: "polled", AC: "polled"}
    assert s.polled_clusters() == [METERING, AC]


def test_forced_polling_asks_no_bind_nor_configure():
    s = DeviceSetup(force_poll=True, endpoint_configured=True)
    asked = _run(s, {})
    assert asked == [Step.METERING_SCALE, Step.AC_SCALE, Step.BASIC]
    assert s.reporting == {METERING: "polled", AC: "polled"}


def test_metering_scaling_is_asked_again_until_usable_and_stale_answers_are_ignored():
    s = DeviceSetup(endpoint_configured=True)
    assert s.pending() is Step.METERING_SCALE
    for outcome in (Outcome.UNUSABLE, Outcome.NO_ANSWER, Outcome.REFUSED):
        assert s.on(Step.METERING_SCALE, outcome) is Effect.RETRY_LATER
        assert s.pending() is Step.METERING_SCALE and not s.ready
    assert s.on(Step.BIND_AC, Outcome.OK) is None  # not the current step
    assert s.remaining()[0] == "metering_scale"
    assert s.on(Step.METERING_SCALE, Outcome.OK) is Effect.ADVANCE


def test_restart_forgets_what_was_learnt():
    s = DeviceSetup()
    _run(s, {})
    s.restart()
    assert s.step is Step.DISCOVER and s.reporting == {} and s.has_ac is None
    assert s.polled_clusters() == []


def test_every_step_has_an_entry_for_every_outcome():
    for step in Step:
        if step is not Step.READY:
            assert all((step, o) in TRANSITIONS for o in Outcome), step
