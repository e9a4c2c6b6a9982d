//! Hand-written diesel schema shared by both backends.
//!
//! On PostgreSQL the tables live in the `cascade` schema, which every pooled
//! connection puts first on its `search_path`; the names here are therefore
//! unqualified and the same SQL works on SQLite.

diesel::table! {
    dags (id) {
        id -> BigInt,
        name -> Text,
        description -> Text,
        version -> Integer,
        hash -> Text,
        schedule -> Nullable<Text>,
        paused -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        next_fire_at -> Nullable<Timestamp>,
        last_fired_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    dag_versions (dag_id, version) {
        dag_id -> BigInt,
        version -> Integer,
        hash -> Text,
        definition -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::json::JsonDoc;

    jobs (id) {
        id -> BigInt,
        dag_id -> BigInt,
        dag_version -> Integer,
        status -> Text,
        trigger -> Text,
        params -> JsonDoc,
        idempotency_key -> Nullable<Text>,
        error -> Nullable<Text>,
        created_at -> Timestamp,
        started_at -> Nullable<Timestamp>,
        completed_at -> Nullable<Timestamp>,
        updated_at -> Timestamp,
        owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamp>,
        cancel_requested_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::json::JsonDoc;

    task_executions (id) {
        id -> BigInt,
        job_id -> BigInt,
        task_id -> Text,
        status -> Text,
        attempt -> Integer,
        fencing_token -> BigInt,
        worker -> Nullable<Text>,
        queue -> Text,
        result -> Nullable<JsonDoc>,
        error -> Nullable<Text>,
        next_attempt_at -> Nullable<Timestamp>,
        lease_expires_at -> Nullable<Timestamp>,
        started_at -> Nullable<Timestamp>,
        completed_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        priority -> Integer,
        lost_count -> Integer,
        labels -> Text,
        retry_base -> Integer,
    }
}

diesel::table! {
    workers (id) {
        id -> Text,
        host -> Text,
        pid -> BigInt,
        queues -> Text,
        labels -> Text,
        capacity -> Integer,
        version -> Text,
        started_at -> Timestamp,
        last_heartbeat -> Timestamp,
        state -> Text,
        role -> Text,
    }
}

diesel::table! {
    task_attempts (id) {
        id -> BigInt,
        job_id -> BigInt,
        task_id -> Text,
        attempt -> Integer,
        status -> Text,
        worker -> Nullable<Text>,
        error -> Nullable<Text>,
        output -> Nullable<Text>,
        started_at -> Nullable<Timestamp>,
        finished_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(dag_versions -> dags (dag_id));
diesel::joinable!(jobs -> dags (dag_id));
diesel::joinable!(task_executions -> jobs (job_id));
diesel::joinable!(task_attempts -> jobs (job_id));

diesel::allow_tables_to_appear_in_same_query!(
    dags,
    dag_versions,
    jobs,
    task_executions,
    task_attempts,
    workers
);
