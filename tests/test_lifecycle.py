"""The trial lifecycle without Ray: every transition, the defects it fixed, and generated orders."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runner import lifecycle as lc
from runner.lifecycle import State

RULES = lc.Rules(objectives=("loss",), decides=True, max_restarts=2, retries=1)


def _kinds(actions):
    return [type(a).__name__ for a in actions]


def _running(rules=RULES, placed=True) -> lc.Lifecycle:
    life = lc.Lifecycle(0, rules)
    assert _kinds(life.handle(lc.Assigned())) == ["Launch"]
    if placed:
        life.handle(lc.Placed("127.0.0.1", "node-a"))
        life.handle(lc.Started(0))
    return life


def _report(step, loss=1.0, awaits=False):
    return lc.Report(step, {"loss": loss}, {"learning_rate": 0.1}, 0.0, awaits)


def test_a_trial_runs_reports_checkpoints_and_completes():
    life = _running()
    assert life.state == State.RUNNING and life.placed
    actions = life.handle(_report(10, awaits=True))
    assert actions[0] == lc.Decide(10, 1.0, True)
    # a step redone after a restart from an earlier point is decided again, but not told twice
    # (before: answered "continue" unasked, so a pause lost with the restart never came back)
    life.handle(lc.Started(0))
    assert life.handle(_report(10, awaits=True))[0] == lc.Decide(10, 1.0, True, tell=False)
    assert _kinds(life.handle(lc.CheckpointDurable(20, "x/ckpt-20"))) == ["WriteHistory"]
    actions = life.handle(lc.Done({"loss": 0.5}, "x/ckpt-40"))
    assert actions[2] == lc.Tell(State.COMPLETE, [0.5])
    # the records first: a driver killed before it tells the study leaves a trial to finish again
    assert _kinds(actions) == ["WriteHistory", "WriteTrial", "Tell", "ReleaseWorker", "Emit"]
    assert life.state == State.COMPLETE and life.checkpoint == "x/ckpt-40"


def test_done_without_the_objective_fails():
    life = _running()
    actions = life.handle(lc.Done({"accuracy": 1.0}))
    assert life.state == State.FAILED and "never reported objective metric 'loss'" in life.error
    assert lc.Tell(State.FAILED) in actions and lc.ReleaseWorker() in actions


def test_a_non_finite_objective_fails_as_optuna_records_it():
    life = _running()
    life.handle(lc.Done({"loss": float("nan")}))
    assert life.state == State.FAILED and life.error == "objective metric 'loss' is nan"


def test_pruned_is_told_as_pruned():
    life = _running()
    assert lc.Tell(State.PRUNED) in life.handle(lc.Pruned("pruned at step 10"))
    assert life.state == State.PRUNED


def test_a_raising_trainable_is_retried_then_fails_and_retries_are_their_own_counter():
    life = _running()
    actions = life.handle(lc.Raised("RuntimeError: boom", "tb"))
    assert life.state == State.QUEUED and life.counts == {"lost": 0, "retries": 1,
                                                          "interruptions": 0}
    assert lc.ReleaseWorker() in actions and life.restart_log[-1]["kind"] == "retry"
    life.handle(lc.Assigned())
    life.handle(lc.Placed("127.0.0.1", "node-a"))
    actions = life.handle(lc.Raised("RuntimeError: boom", "tb"))
    assert life.state == State.FAILED and life.error == "RuntimeError: boom"
    assert life.traceback == "tb"


def test_losing_the_worker_more_than_max_restarts_fails_even_with_retries_left():
    """Defect 5: retries: 1 and more lost workers than max_restarts crashed the driver."""
    life = _running()
    for _ in range(RULES.max_restarts):
        actions = life.handle(lc.WorkerLost("RayActorError"))
        assert life.state == State.LOST and lc.ForgetWorker() in actions
        life.handle(lc.Assigned())
        life.handle(lc.Placed("127.0.0.1", "node-b"))
    actions = life.handle(lc.WorkerLost("RayActorError"))
    assert life.state == State.FAILED and life.error.startswith("worker lost 3 times")
    assert lc.ForgetWorker() in actions and lc.ReleaseWorker() not in actions
    assert life.counts == {"lost": 2, "retries": 0, "interruptions": 0}


def test_a_restart_log_entry_says_where_the_trial_went_and_from_which_step():
    life = _running()
    life.handle(lc.CheckpointDurable(40))
    life.handle(lc.WorkerLost("RayActorError"))
    life.handle(lc.Assigned())
    life.handle(lc.Placed("127.0.0.2", "node-b"))
    life.handle(lc.Started(40))
    (entry,) = life.restart_log
    assert entry["from_node"] == "node-a" and entry["to_node"] == "node-b"
    assert entry["from_step"] == 40 and entry["resumed_at"] == 40 and entry["kind"] == "lost"


def test_reports_saved_with_the_checkpoint_come_back_on_resume():
    """Defect 10: the report at the resume step was lost when the worker died after the save."""
    life = _running()
    life.handle(_report(30))
    life.handle(lc.WorkerLost("RayActorError"))
    life.handle(lc.Assigned())
    life.handle(lc.Placed("127.0.0.1", "node-a"))
    replay = ({"step": 40, "metrics": {"loss": 0.4}, "hyperparams": {}, "time": 1.0},)
    actions = life.handle(lc.Started(40, replay))
    assert sorted(life.reports) == [30, 40] and lc.Decide(40, 0.4, False) in actions


def test_reports_after_the_resume_step_are_dropped_to_be_redone():
    life = _running()
    for step in (10, 20, 30):
        life.handle(_report(step))
    life.handle(lc.WorkerLost("RayActorError"))
    life.handle(lc.Assigned())
    life.handle(lc.Started(20))
    assert sorted(life.reports) == [10, 20]


def test_pause_checkpoints_a_running_trial_and_resume_queues_it():
    life = _running()
    assert life.handle(lc.Control("pause")) == [lc.Interrupt("paused")]
    assert life.state == State.HANDING_OVER
    life.handle(lc.CheckpointDurable(44))
    actions = life.handle(lc.Interrupted("paused"))
    assert life.state == State.PAUSED and lc.ReleaseWorker() in actions
    assert life.counts["interruptions"] == 1 and life.counts["lost"] == 0
    life.handle(lc.Control("resume"))
    assert life.state == State.QUEUED


def test_a_pause_answered_to_a_report_sends_no_second_interrupt():
    life = _running()
    life.handle(_report(50, awaits=True))
    assert life.handle(lc.Control("pause", worker_told=True)) == []  # the answer told the worker
    assert life.state == State.HANDING_OVER
    life.handle(lc.CheckpointDurable(50))
    life.handle(lc.Interrupted("paused"))
    assert life.state == State.PAUSED and life.checkpoint_step == 50


def test_pausing_a_paused_trial_says_so_and_changes_nothing():
    life = _running()
    life.handle(lc.Control("pause"))
    (notice,) = life.handle(lc.Control("pause"))
    assert notice.info["message"] == "trial 0 is already paused"
    life.handle(lc.Interrupted("paused"))
    (notice,) = life.handle(lc.Control("pause"))
    assert life.state == State.PAUSED and "already paused" in notice.info["message"]


def test_pause_of_a_queued_trial_or_of_one_whose_actor_never_started_is_immediate():
    queued = lc.Lifecycle(1, RULES)
    queued.handle(lc.Control("pause"))
    assert queued.state == State.PAUSED
    pending = _running(placed=False)
    actions = pending.handle(lc.Control("pause"))
    assert pending.state == State.PAUSED and lc.KillWorker() in actions


def test_stopping_the_sweep():
    running, pending, queued = _running(), _running(placed=False), lc.Lifecycle(2, RULES)
    assert running.handle(lc.Control("stop")) == [lc.Interrupt("stopped")]
    running.handle(lc.Interrupted("stopped"))
    assert running.state == State.STOPPED and running.counts["interruptions"] == 0
    assert pending.handle(lc.Control("stop")) == [lc.KillWorker()]
    queued.handle(lc.Control("stop"))
    assert {running.state, pending.state, queued.state} == {State.STOPPED}


def test_a_stop_during_a_migration_stops_the_trial_where_it_checkpoints():
    life = _running()
    life.handle(lc.Control("migrate", {"node": "node-b", "soft": False}))
    assert life.state == State.HANDING_OVER
    life.handle(lc.Control("stop"))
    life.handle(lc.Interrupted("migrate"))
    assert life.state == State.STOPPED


def test_migrate_relaunches_with_the_placement():
    life = _running()
    placement = {"node": "node-b", "soft": False}
    assert life.handle(lc.Control("migrate", placement)) == [lc.Interrupt("migrate")]
    life.handle(lc.Interrupted("migrate"))
    assert life.state == State.QUEUED and life.restart_log[-1]["kind"] == "migrate"
    assert life.handle(lc.Assigned()) == [lc.Launch(placement)]


def test_a_preempted_worker_is_killed_and_the_trial_prefers_another_node():
    life = _running()
    actions = life.handle(lc.Interrupted("preempted"))
    assert lc.KillWorker() in actions and life.state == State.QUEUED
    assert life.handle(lc.Assigned()) == [lc.Launch({"avoid": "node-a"})]


def test_a_lost_worker_while_pausing_still_pauses():
    life = _running()
    life.handle(lc.Control("pause"))
    life.handle(lc.WorkerLost("RayActorError"))
    assert life.state == State.PAUSED and life.counts["lost"] == 1


def test_control_of_a_finished_trial_is_a_notice():
    life = _running()
    life.handle(lc.Done({"loss": 1.0}))
    (action,) = life.handle(lc.Control("pause"))
    assert isinstance(action, lc.Emit) and "is complete; nothing to pause" in action.info["message"]


def test_an_invalid_sampled_schedule_fails_the_trial_alone():
    """Defect 4: a point whose schedule is invalid left the trial RUNNING with a traceback."""
    life = lc.Lifecycle(3, RULES)
    actions = life.handle(lc.Rejected("invalid schedule: hyperparams.learning_rate: ..."))
    assert life.state == State.FAILED and lc.Tell(State.FAILED) in actions
    assert not any(isinstance(a, (lc.ReleaseWorker, lc.Launch)) for a in actions)


def test_a_superseded_trial_is_given_up_without_telling_the_study():
    life = _running()
    actions = life.handle(lc.Superseded("claimed by writer 'x'"))
    assert life.state == State.SUPERSEDED and not any(isinstance(a, lc.Tell) for a in actions)


def test_a_trial_resumed_by_a_new_driver_logs_it_unbounded():
    life = lc.Lifecycle(0, RULES)
    life.resumed_by_new_driver("driver lost", 5.0)
    assert life.restart_log[0]["kind"] == "driver" and life.counts["lost"] == 0


# --- generated event orders ----------------------------------------------------------------------

EVENTS = st.one_of(
    st.just(lc.Assigned()), st.just(lc.Placed("127.0.0.1", "node-a")),
    st.builds(lc.Started, st.sampled_from([0, 20, 40])),
    st.builds(_report, st.sampled_from([10, 20, 30, 40]), st.just(1.0), st.booleans()),
    st.builds(lc.CheckpointDurable, st.sampled_from([20, 40])),
    st.just(lc.Done({"loss": 0.5})), st.just(lc.Done({})), st.just(lc.Pruned()),
    st.just(lc.Raised("E: x", "tb")), st.just(lc.WorkerLost("RayActorError")),
    st.builds(lc.Interrupted, st.sampled_from(["paused", "stopped", "migrate", "preempted"])),
    st.just(lc.Superseded("claimed")),
    st.builds(lc.Control, st.sampled_from(["pause", "resume", "stop"])),
    st.just(lc.Control("migrate", {"node": "node-b", "soft": False})),
    st.just(lc.Rejected("invalid")),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(EVENTS, max_size=40),
       st.builds(lc.Rules, st.just(("loss",)), st.booleans(), st.integers(0, 2),
                 st.integers(0, 2)))
def test_any_event_order_keeps_the_invariants(events, rules):
    life = lc.Lifecycle(0, rules)
    holds_worker, told, asked = False, 0, set()
    for event in events:
        was_finished = life.finished
        actions = life.handle(event)
        if was_finished:  # a finished trial is final: nothing but notices
            assert all(isinstance(a, lc.Emit) for a in actions)
        for action in actions:
            if isinstance(action, lc.Launch):
                assert not holds_worker
                holds_worker = True
            elif isinstance(action, (lc.ReleaseWorker, lc.KillWorker, lc.ForgetWorker)):
                assert holds_worker, "let go of a worker it did not have"
                holds_worker = False
            elif isinstance(action, (lc.Interrupt, lc.AnswerWorker)):
                assert holds_worker
            elif isinstance(action, lc.Tell):
                told += 1
            elif isinstance(action, lc.Decide):
                assert action.step not in asked, "the study was told a step twice"
                asked.add(action.step)
        # a trial holds a worker exactly while it runs on one
        assert holds_worker == (life.state in lc.ON_WORKER)
        assert told == (1 if life.finished else 0)
        assert life.counts["lost"] <= rules.max_restarts
        assert life.counts["retries"] <= rules.retries
        assert life.restarts >= life.counts["lost"] + life.counts["retries"]  # pauses aside


def test_a_paused_trial_the_strategy_prunes_ends_pruned_without_a_worker():
    life = _running()
    life.handle(lc.CheckpointDurable(20, "x/ckpt-20"))
    assert _kinds(life.handle(lc.Control("pause"))) == ["Interrupt"]
    life.handle(lc.Interrupted("paused"))
    assert life.state == State.PAUSED
    actions = life.handle(lc.Control("prune"))
    assert _kinds(actions) == ["WriteHistory", "WriteTrial", "Tell", "Emit"]
    assert actions[2] == lc.Tell(State.PRUNED) and life.state == State.PRUNED
    running = _running()  # only a paused trial: a running one is left as it is
    (notice,) = running.handle(lc.Control("prune"))
    assert running.state == State.RUNNING and "not paused (running); not pruned" in \
        notice.info["message"]
