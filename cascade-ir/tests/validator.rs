//! The validator through its JSON entry point, as the runtime uses it.

use cascade_ir::{IrError, ValidDag, ValidationError};

fn errors(json: &str) -> Vec<ValidationError> {
    match ValidDag::from_json(json) {
        Err(IrError::Invalid(invalid)) => invalid.errors,
        Err(other) => panic!("expected validation errors, got {other}"),
        Ok(_) => panic!("expected validation errors, the dag is valid"),
    }
}

fn valid(json: &str) -> ValidDag {
    ValidDag::from_json(json).unwrap_or_else(|e| panic!("expected a valid dag: {e}"))
}

fn dag_with_tasks(tasks: &str) -> String {
    format!(r#"{{"ir_version": 1, "name": "test", "tasks": [{tasks}]}}"#)
}

#[test]
fn cycle_path_lists_the_tasks_in_run_order() {
    let json = dag_with_tasks(
        r#"{"id": "alpha", "handler": "h", "depends_on": ["gamma"]},
           {"id": "beta", "handler": "h", "depends_on": ["alpha"]},
           {"id": "gamma", "handler": "h", "depends_on": ["beta"]}"#,
    );
    let errors = errors(&json);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "dependency cycle: alpha -> beta -> gamma -> alpha"
    );
    let location = errors[0].location();
    assert_eq!(
        (location.task, location.key, location.position),
        (Some(0), "depends_on", Some(0))
    );
}

#[test]
fn unknown_dependency_names_both_tasks() {
    let errors = errors(&dag_with_tasks(
        r#"{"id": "a", "handler": "h"}, {"id": "b", "handler": "h", "depends_on": ["a", "nope"]}"#,
    ));
    assert_eq!(errors[0].to_string(), "task `b` depends on unknown task `nope`");
    assert_eq!(errors[0].location().position, Some(1));
}

#[test]
fn duplicate_ids_point_at_the_second() {
    let errors = errors(&dag_with_tasks(
        r#"{"id": "a", "handler": "h"}, {"id": "b", "handler": "h"}, {"id": "a", "handler": "h"}"#,
    ));
    assert!(matches!(&errors[0], ValidationError::DuplicateTask { task, .. } if task == "a"));
    assert_eq!(errors[0].location().task, Some(2));
}

#[test]
fn self_dependency() {
    let errors = errors(&dag_with_tasks(
        r#"{"id": "a", "handler": "h", "depends_on": ["a"]}"#,
    ));
    assert_eq!(
        errors,
        vec![ValidationError::SelfDependency {
            task: "a".into(),
            location: errors[0].location()
        }]
    );
    assert_eq!(errors[0].to_string(), "task `a` depends on itself");
}

#[test]
fn unknown_keys_are_malformed_with_line_and_column() {
    let json = "{\"ir_version\": 1, \"name\": \"x\",\n \"tasks\": [{\"id\": \"a\", \"handler\": \"h\", \"timout\": 5}]}";
    match ValidDag::from_json(json) {
        Err(IrError::Malformed { line, column, source }) => {
            assert_eq!(line, 2);
            assert!(column > 30, "column {column}");
            assert!(source.to_string().contains("unknown field `timout`"), "{source}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn wrong_or_missing_ir_version() {
    for (json, found) in [
        (r#"{"ir_version": 2, "name": "x", "tasks": []}"#, "2"),
        (r#"{"ir_version": "1", "name": "x", "tasks": []}"#, "\"1\""),
        (r#"{"name": "x", "tasks": []}"#, "(missing)"),
    ] {
        match ValidDag::from_json(json) {
            Err(IrError::UnsupportedVersion {
                found: f,
                supported: 1,
            }) => assert_eq!(f, found),
            other => panic!("expected UnsupportedVersion for {json}, got {other:?}"),
        }
    }
}

#[test]
fn malformed_json() {
    for json in ["", "{", "[1, 2]", r#"{"ir_version": 1, "name": "x", "tasks": [}"#] {
        assert!(
            matches!(
                ValidDag::from_json(json),
                Err(IrError::Malformed { .. } | IrError::UnsupportedVersion { .. })
            ),
            "{json:?}"
        );
    }
    assert!(matches!(
        ValidDag::from_json(r#"{"ir_version": 1, "name": "x", "tasks": [{"id": 5}]}"#),
        Err(IrError::Malformed { .. })
    ));
}

#[test]
fn timeouts_must_be_in_range() {
    for bad in ["0", "-1", "2592001", "9223372036854775807"] {
        let errors = errors(&dag_with_tasks(&format!(
            r#"{{"id": "a", "handler": "h", "timeout": {bad}}}"#
        )));
        assert_eq!(
            errors[0].to_string(),
            format!("task `a`: invalid timeout {bad}: expected whole seconds from 1 to 2592000 (30 days)")
        );
        assert_eq!(errors[0].location().key, "timeout");
    }
    for good in ["1", "2592000"] {
        valid(&dag_with_tasks(&format!(
            r#"{{"id": "a", "handler": "h", "timeout": {good}}}"#
        )));
    }
}

#[test]
fn unknown_trigger_rule() {
    let errors = errors(&dag_with_tasks(
        r#"{"id": "a", "handler": "h", "trigger_rule": "sometimes"}"#,
    ));
    assert!(matches!(&errors[0], ValidationError::UnknownTriggerRule { value, .. } if value == "sometimes"));
    assert_eq!(errors[0].location().key, "trigger_rule");
}

#[test]
fn bad_and_never_firing_cron() {
    let with_schedule = |s: &str| {
        format!(
            r#"{{"ir_version": 1, "name": "x", "schedule": "{s}", "tasks": [{{"id": "a", "handler": "h"}}]}}"#
        )
    };
    for (schedule, reason) in [
        ("61 * * * *", "minute field `61`"),
        ("* * *", "found 3 field(s)"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        (
            "*/4294967295 * * * *",
            "invalid cron schedule `*/4294967295 * * * *`: minute field `*/4294967295`: \
             step `4294967295` must be a number from 1 to 60",
        ),
        (
            "7/4294967295 * * * *",
            "step `4294967295` must be a number from 1 to 60",
        ),
        (
            "0 0 1/18446744073709551616 * *",
            "day-of-month field `1/18446744073709551616`: step `18446744073709551616` must be a number from 1 to 31",
        ),
    ] {
        let errors = errors(&with_schedule(schedule));
        assert!(matches!(errors[0], ValidationError::InvalidCron { .. }));
        assert!(errors[0].to_string().contains(reason), "{}", errors[0]);
        assert_eq!(errors[0].location().key, "schedule");
    }
    assert!(valid(&with_schedule("@daily")).schedule().is_some());
}

#[test]
fn every_error_is_reported_at_once() {
    let json = r#"{"ir_version": 1, "name": "bad name", "schedule": "nope",
        "tasks": [
            {"id": "a", "handler": "h", "timeout": 0, "retries": 500},
            {"id": "b", "depends_on": ["a", "zzz"], "trigger_rule": "x"},
            {"id": "a", "handler": "h"}
        ]}"#;
    let errors = errors(json);
    let kinds: Vec<&str> = errors
        .iter()
        .map(|e| match e {
            ValidationError::InvalidDagName { .. } => "name",
            ValidationError::InvalidCron { .. } => "cron",
            ValidationError::DuplicateTask { .. } => "duplicate",
            ValidationError::InvalidValue { key, .. } => key,
            ValidationError::UnknownDependency { .. } => "unknown dependency",
            ValidationError::UnknownTriggerRule { .. } => "trigger rule",
            ValidationError::MissingHandler { .. } => "missing handler",
            _ => "other",
        })
        .collect();
    for kind in [
        "name",
        "cron",
        "duplicate",
        "timeout",
        "retries",
        "unknown dependency",
        "trigger rule",
        "missing handler",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
}

fn order_of(dag: &ValidDag) -> Vec<&str> {
    dag.topological_order()
        .iter()
        .map(|&i| dag.tasks()[i].id.as_str())
        .collect()
}

#[test]
fn topological_order_is_deterministic_with_ties_in_declaration_order() {
    // Independent tasks keep declaration order, whatever their names.
    let tasks = r#"{"id": "z", "handler": "h"}, {"id": "m", "handler": "h"},
                   {"id": "a", "handler": "h", "depends_on": ["z", "m"]}, {"id": "b", "handler": "h"}"#;
    let dag = valid(&dag_with_tasks(tasks));
    assert_eq!(order_of(&dag), ["z", "m", "b", "a"]);
    // The same input always gives the same order.
    assert_eq!(order_of(&valid(&dag_with_tasks(tasks))), order_of(&dag));
}

#[test]
fn topological_order_is_breadth_first_not_smallest_index_first() {
    // FIXME: `d` (declared first) becomes ready after `a` is already queued, so
    // the FIFO Kahn order is c, b, a, d; "ties by declaration order" read as
    // "always the earliest-declared ready task" would give c, b, d, a. Today's
    // behaviour is asserted; see docs/ir.md.
    let dag = valid(&dag_with_tasks(
        r#"{"id": "d", "handler": "h", "depends_on": ["b", "c"]},
           {"id": "c", "handler": "h"},
           {"id": "b", "handler": "h"},
           {"id": "a", "handler": "h", "depends_on": ["c"]}"#,
    ));
    assert_eq!(order_of(&dag), ["c", "b", "a", "d"]);
    let listed: Vec<&str> = dag
        .ir()
        .topological_order
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(listed, order_of(&dag));
}

#[test]
fn hash_ignores_key_order_and_follows_content() {
    let one =
        valid(r#"{"ir_version": 1, "name": "x", "tasks": [{"id": "a", "handler": "h", "timeout": 5}]}"#);
    let two =
        valid(r#"{"tasks": [{"timeout": 5, "handler": "h", "id": "a"}], "name": "x", "ir_version": 1}"#);
    assert_eq!(one.hash(), two.hash());
    assert_eq!(one.ir_json(), two.ir_json());
    let changed =
        valid(r#"{"ir_version": 1, "name": "x", "tasks": [{"id": "a", "handler": "h", "timeout": 6}]}"#);
    assert_ne!(one.hash(), changed.hash());
    let renamed =
        valid(r#"{"ir_version": 1, "name": "x", "tasks": [{"id": "a", "handler": "g", "timeout": 5}]}"#);
    assert_ne!(one.hash(), renamed.hash());
}

#[test]
fn normalized_output_validates_to_the_same_bytes() {
    let dag = valid(&dag_with_tasks(
        r#"{"id": "a", "handler": "h"}, {"id": "b", "handler": "h", "depends_on": ["a"]}"#,
    ));
    let again = valid(dag.ir_json());
    assert_eq!(again.ir_json(), dag.ir_json());
    assert_eq!(again.hash(), dag.hash());
}

#[test]
fn mismatched_hash_or_order_is_rejected() {
    let dag = valid(&dag_with_tasks(
        r#"{"id": "a", "handler": "h"}, {"id": "b", "handler": "h", "depends_on": ["a"]}"#,
    ));
    let wrong_hash = dag.ir_json().replace(dag.hash(), &"0".repeat(64));
    assert!(matches!(
        errors(&wrong_hash)[..],
        [ValidationError::HashMismatch { .. }]
    ));
    let wrong_order = dag.ir_json().replace(
        r#""topological_order":["a","b"]"#,
        r#""topological_order":["b","a"]"#,
    );
    assert_ne!(wrong_order, dag.ir_json());
    let errors = errors(&wrong_order);
    assert!(
        errors.iter().any(|e| matches!(e, ValidationError::OrderMismatch)),
        "{errors:?}"
    );
}

/// A wide fan-in: one task depending on many, with repeats far apart.
#[test]
fn repeated_dependencies_in_a_wide_fan_in() {
    let n = 20_000;
    let mut tasks: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"id": "t{i}", "handler": "h"}}"#))
        .collect();
    let mut deps: Vec<String> = (0..n).map(|i| format!(r#""t{i}""#)).collect();
    // Repeats of the first and of the last dependency, at the end.
    deps.push(r#""t0""#.to_owned());
    deps.push(format!(r#""t{}""#, n - 1));
    tasks.push(format!(
        r#"{{"id": "sink", "handler": "h", "depends_on": [{}]}}"#,
        deps.join(",")
    ));
    let errors = errors(&dag_with_tasks(&tasks.join(",")));
    let repeated: Vec<(String, Option<usize>)> = errors
        .iter()
        .map(|error| match error {
            ValidationError::DuplicateDependency { task, dependency, .. } => {
                assert_eq!(task, "sink");
                (dependency.clone(), error.location().position)
            }
            other => panic!("unexpected error {other}"),
        })
        .collect();
    assert_eq!(
        repeated,
        [("t0".to_owned(), Some(n)), (format!("t{}", n - 1), Some(n + 1))]
    );

    // Without the repeats the fan-in is valid, in declaration order.
    deps.truncate(n);
    tasks.pop();
    tasks.push(format!(
        r#"{{"id": "sink", "handler": "h", "depends_on": [{}]}}"#,
        deps.join(",")
    ));
    let dag = valid(&dag_with_tasks(&tasks.join(",")));
    let sink = &dag.tasks()[n];
    assert_eq!(sink.dependencies, (0..n).collect::<Vec<_>>());
    assert_eq!(dag.tasks()[0].dependents, [n]);
}

#[test]
fn repeated_and_empty_labels() {
    let errors = errors(&dag_with_tasks(
        r#"{"id": "a", "handler": "h", "labels": ["gpu", "ssd", "gpu", " ", "ssd"]}"#,
    ));
    let values: Vec<String> = errors
        .iter()
        .map(|error| match error {
            ValidationError::InvalidValue {
                key: "labels", value, ..
            } => value.clone(),
            other => panic!("unexpected error {other}"),
        })
        .collect();
    assert_eq!(values, [r#""gpu""#, r#"" ""#, r#""ssd""#]);
    let dag = valid(&dag_with_tasks(
        r#"{"id": "a", "handler": "h", "labels": ["gpu", "ssd"]}"#,
    ));
    assert_eq!(dag.tasks()[0].labels, ["gpu", "ssd"]);
}

#[test]
fn shell_env_references_are_checked_against_direct_dependencies() {
    let errors = errors(&dag_with_tasks(
        r#"{"id": "extract", "handler": "h"},
           {"id": "transform", "handler": "h", "depends_on": ["extract"]},
           {"id": "load", "type": "shell", "command": "echo \"$N\"", "depends_on": ["transform"],
            "env": {"N": "${upstream.extract.count}", "R": "${param.region}", "S": "${params.region", "OK": "${params.a}-${upstream.transform}"}}"#,
    ));
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "task `load`: env `N`: `${upstream.extract.count}`: `extract` is not a direct dependency of this task (its dependencies: `transform`)",
            "task `load`: env `R`: `${param.region}`: unknown root `param`: expected `params` or `upstream` (write `$${` for a literal `${`)",
            "task `load`: env `S`: `${` at byte 0 is not closed by `}` (write `$${` for a literal `${`)",
        ]
    );
    assert!(errors.iter().all(|e| matches!(
        e,
        ValidationError::InvalidEnvReference { task, .. } if task == "load"
    )));
    assert_eq!(
        (errors[0].location().task, errors[0].location().key),
        (Some(2), "env")
    );
}

#[test]
fn clean_env_is_a_shell_key_kept_in_the_normalized_ir() {
    let dag = valid(&dag_with_tasks(
        r#"{"id": "s", "type": "shell", "command": "env", "clean_env": true}, {"id": "t", "type": "shell", "command": "env"}"#,
    ));
    assert!(matches!(
        &dag.tasks()[0].kind,
        cascade_ir::TaskKind::Shell { clean_env: true, .. }
    ));
    assert!(dag.ir_json().contains(r#""clean_env":true"#));
    // Off is the default and is not written, so existing DAGs keep their hash.
    assert_eq!(dag.ir_json().matches("clean_env").count(), 1);
    let errors = errors(&dag_with_tasks(
        r#"{"id": "l", "handler": "h", "clean_env": true}"#,
    ));
    assert_eq!(
        errors[0].to_string(),
        "task `l`: `clean_env` is not allowed on a local task"
    );
}

#[test]
fn equal_jitter_keeps_retries_in_the_upper_half_of_the_backoff() {
    let dag = valid(&dag_with_tasks(
        r#"{"id": "t", "handler": "h", "retries": 5, "retry_delay": 10, "retry_max_delay": 30},
           {"id": "u", "handler": "h", "retries": 5, "retry_delay": 10, "retry_jitter": false}"#,
    ));
    let jittered = dag.tasks()[0].retry;
    for retry in 1..=5 {
        let backoff = jittered.backoff(retry);
        for step in 0..100 {
            let delay = jittered.delay(retry, f64::from(step) / 100.0);
            assert!(
                delay >= backoff / 2 && delay <= backoff,
                "retry {retry}: {delay:?} outside [{:?}, {backoff:?}]",
                backoff / 2
            );
        }
    }
    assert_eq!(jittered.delay(3, 0.0), std::time::Duration::from_secs(15));
    assert_eq!(jittered.delay(1, f64::NAN), std::time::Duration::from_secs(5));
    let plain = dag.tasks()[1].retry;
    assert_eq!(plain.delay(2, 0.0), std::time::Duration::from_secs(20));
}
