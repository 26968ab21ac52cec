//! The job-run, daemon and alert tests whose subject touches the store, each body run
//! again on PostgreSQL (see [`crate::store`]); skipped and counted without
//! `AGENT_TEST_POSTGRES_URL` ([`crate::needs`]). Left out: tests of SQLite files of earlier
//! versions (PostgreSQL has no earlier version), and the scheduler's tests under a paused
//! clock, whose recorder touches no database.

mod job {
    crate::store::on_postgres!(
        job::a_run_creates_waits_and_records_every_action,
        job::rotation_keeps_the_policy_and_never_touches_unmanaged_or_pinned,
        job::a_delete_is_not_recorded_for_a_snapshot_pinned_since_it_was_chosen,
        job::nothing_is_deleted_after_a_failed_or_timed_out_snapshot,
        job::a_failed_snapshot_is_cleaned_up_by_the_next_successful_run,
        job::at_the_limit_room_is_made_and_the_newest_good_one_kept,
        job::a_server_full_of_unmanaged_snapshots_fails_naming_them,
        job::a_dropped_create_response_yields_exactly_one_snapshot,
        job::transient_errors_are_retried_and_a_400_is_not,
        job::pagination_is_honoured_when_the_limit_is_near,
        job::deletions_are_capped_and_one_failed_delete_does_not_stop_the_rest,
        job::a_snapshot_deleted_by_someone_else_mid_run_fails_the_run,
        job::a_managed_snapshot_that_vanished_between_runs_raises_drift,
        job::drift_reads_only_the_snapshots_still_left,
        job::an_adopted_snapshot_that_vanished_is_reported_once,
        job::two_runs_on_one_server_never_overlap,
        job::a_run_that_died_before_creating_is_marked_interrupted,
        job::a_run_that_died_after_sending_create_adopts_the_snapshot,
        job::a_run_that_died_mid_poll_is_finished_and_rotated,
        job::a_fire_finishes_its_jobs_orphaned_run_before_its_own,
        job::a_run_aborted_at_any_point_resumes_without_a_duplicate,
        job::a_run_this_process_left_over_is_settled_and_its_lock_freed,
        job::a_run_this_process_left_over_is_resumed_under_the_lock_it_left,
        job::a_steady_state_run_costs_two_requests_plus_polls_plus_deletions,
        job::job_summaries_agree_with_the_one_job_queries,
        job::a_stored_time_that_is_no_time_fails_the_read_naming_its_column,
    );
}

mod daemon {
    crate::store::on_postgres!(
        daemon::a_missed_fire_is_caught_up_exactly_once,
        daemon::a_window_job_is_not_caught_up_once_its_window_opened,
        daemon::a_job_without_a_success_for_stale_after_raises_one_stale_alert,
    );
}

mod mail {
    crate::store::on_postgres!(
        mail::a_failure_sends_one_mail_naming_job_server_and_error,
        mail::jobs_failing_together_send_one_digest,
        mail::an_alert_survives_an_smtp_outage_and_a_restart,
        mail::alerts_older_than_a_day_go_out_marked_late,
    );
}

mod agents {
    crate::store::on_postgres!(
        agents::a_fire_is_claimed_once_however_many_agents_fire_it,
        agents::a_fire_already_taken_is_refused_without_waiting_to_write,
        agents::another_hosts_run_and_lock_are_left_alone_while_its_agent_heartbeats,
        agents::an_agent_whose_run_was_taken_over_records_no_intent_and_sends_nothing,
        agents::a_daemon_that_stops_heartbeating_is_alerted_once,
        agents::a_stale_job_is_alerted_once_however_many_agents_check,
        agents::status_metrics_and_the_page_show_a_gone_agent,
        agents::two_daemons_on_one_database_run_each_fire_once,
        agents::a_killed_daemons_run_is_finished_by_the_other_without_a_second_snapshot,
    );
}

mod db_copy {
    crate::store::on_postgres!(db_copy::a_sqlite_history_is_copied_into_postgres_whole);
}

mod pg_faults {
    crate::store::on_postgres!(
        pg_faults::a_fire_waits_out_an_unreachable_database_and_runs_once,
        pg_faults::a_run_that_loses_its_database_is_settled_when_it_returns,
        pg_faults::an_agent_cut_off_from_the_others_is_replaced_and_sends_nothing_more,
        pg_faults::sslmode_is_honoured,
        pg_faults::a_killed_agent_on_another_host_is_finished_by_the_other_after_its_lease,
        pg_faults::an_intent_racing_a_takeover_waits_for_it_and_is_refused,
    );
}

mod store {
    crate::store::on_postgres!(store::numbered_placeholders_bind_by_number);
}

mod reliability {
    crate::store::on_postgres!(reliability::many_openers_of_a_new_database_at_once_all_succeed);
}
