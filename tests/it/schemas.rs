//! The message schemas in `schemas/`: real messages the worker produces validate against them,
//! and messages that break the contract do not (so the schemas are not vacuous). The AsyncAPI
//! document names every routing key and references only schema files that exist.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::helpers::{TestEnv, openai_error, openai_ok};

fn schema_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name)
}

fn validator(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(schema_path(name)).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"))
}

pub fn assert_valid(name: &str, instance: &Value) {
    let validator = validator(name);
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?}\n{instance:#}");
}

fn assert_invalid(name: &str, instance: &Value) {
    assert!(
        !validator(name).is_valid(instance),
        "{name} accepted {instance:#}"
    );
}

#[tokio::test]
async fn real_results_match_the_result_schema() {
    let mut env = TestEnv::start(vec![
        openai_ok(),
        openai_error(
            400,
            "Your request was rejected",
            Some("content_policy_violation"),
        ),
    ])
    .await;
    let miss = env.run(&env.job("u", json!({}))).await;
    let hit = env.run(&env.job("u", json!({}))).await;
    let refused = env.run(&env.job("u", json!({"hair": "long"}))).await;
    let invalid = env
        .run(&env.job("u", json!({"model": "dall-e-2", "size": "1536x1024"})))
        .await;
    assert_eq!(refused["error"]["code"], "content_policy");
    for result in [&miss, &hit, &refused, &invalid] {
        assert_valid("result.schema.json", result);
    }
    let mut broken = miss.clone();
    broken["status"] = json!("done");
    assert_invalid("result.schema.json", &broken);
    let mut broken = refused.clone();
    broken["error"]["code"] = json!("oops");
    assert_invalid("result.schema.json", &broken);
    let mut broken = hit.clone();
    broken.as_object_mut().unwrap().remove("saved_usd");
    assert_invalid("result.schema.json", &broken);
    assert_eq!(miss["model"], "gpt-image-2.6-flare");
    let mut broken = hit.clone();
    broken.as_object_mut().unwrap().remove("model");
    assert_invalid("result.schema.json", &broken);
    env.cleanup().await;
}

#[test]
fn jobs_match_the_job_schema() {
    let contract_example = json!({
        "job_id": "0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10",
        "user_id": "user-42",
        "tier": "monthly_basic",
        "config": {
            "model": "gpt-image-1", "size": "1024x1024", "familyType": "father", "gesture": "wave",
            "hair": "short", "skinTone": "medium", "accessories": ["glasses"],
            "colorTheme": "pastel-blue", "background": "auto"
        },
        "force_refresh": false
    });
    assert_valid("job.schema.json", &contract_example);
    assert_valid("job.schema.json", &json!({"user_id": "u"}));
    assert_valid(
        "job.schema.json",
        &json!({"user_id": "u", "config": {"quality": "high", "prompt": "smiling"}}),
    );
    assert_valid(
        "job.schema.json",
        &json!({"user_id": "u", "config": {"model": "gpt-image-2.6-flare", "size": "2048x1152",
                                           "quality": "max", "complexity": "high"}}),
    );
    assert_invalid(
        "job.schema.json",
        &json!({"user_id": "u", "config": {"complexity": "extreme"}}),
    );
    assert_invalid(
        "job.schema.json",
        &json!({"user_id": "u", "config": {"size": "big"}}),
    );
    // The schema names exactly the catalogue's models.
    let text = std::fs::read_to_string(schema_path("job.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let mut named: Vec<String> = schema["properties"]["config"]["properties"]["model"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str().filter(|m| !m.is_empty()).map(str::to_owned))
        .collect();
    let mut known: Vec<String> = memoji_worker::job::Model::all()
        .map(|m| m.name().to_owned())
        .collect();
    named.sort();
    known.sort();
    assert_eq!(named, known);
    assert_invalid("job.schema.json", &json!({"config": {}}));
    assert_invalid("job.schema.json", &json!({"user_id": ""}));
    assert_invalid("job.schema.json", &json!({"user_id": "u", "tier": "gold"}));
    assert_invalid(
        "job.schema.json",
        &json!({"user_id": "u", "job_id": "not-a-uuid"}),
    );
    assert_invalid(
        "job.schema.json",
        &json!({"user_id": "u", "config": {"prompt": "x".repeat(1001)}}),
    );
}

#[test]
fn the_asyncapi_document_names_every_message_and_existing_schemas() {
    let text = std::fs::read_to_string(schema_path("asyncapi.yaml")).unwrap();
    assert!(text.starts_with("# ") && text.contains("asyncapi: 3.0.0"));
    for name in [
        "memoji.jobs",
        "memoji.results",
        "result.succeeded",
        "result.failed",
        "memoji.metrics",
        "stats.snapshot",
        "job.completed",
        "cleanup.completed",
        "warm.completed",
        "memoji.dead",
        "memoji.jobs.dead",
        "x-memoji-reason",
    ] {
        assert!(text.contains(name), "asyncapi.yaml does not mention {name}");
    }
    let refs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("$ref: './"))
        .map(|r| r.trim_end_matches('\''))
        .collect();
    // Every schema in the repository is referenced, once.
    let mut on_disk: Vec<String> = Vec::new();
    for dir in ["", "metrics/"] {
        for entry in std::fs::read_dir(schema_path(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".schema.json") {
                on_disk.push(format!("{dir}{name}"));
            }
        }
    }
    let mut referenced: Vec<String> = refs.iter().map(|r| (*r).to_owned()).collect();
    on_disk.sort();
    referenced.sort();
    assert_eq!(referenced, on_disk);
    for file in refs {
        validator(file);
    }
}
