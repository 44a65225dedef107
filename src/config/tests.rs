//! One bad file per rule; each error must name the field and say what is wrong.

use super::*;
use std::time::Duration;

const VALID: &str = "\
name: my-endpoint
traffic: {blue: 90, green: 10}
deployments:
  - name: blue
    model: {name: model-1, version: 1}
    instance_count: 2
    instances: [http://127.0.0.1:9001, http://127.0.0.1:9002]
  - name: green
    model: {name: model-2, version: 1}
    instances: [http://127.0.0.1:9003]
auth_mode: none
";

/// Parses `text`, expecting exactly one issue, and returns it.
fn single_issue(text: &str) -> Issue {
    let error = EndpointConfig::parse(text).expect_err("the file should be rejected");
    let issues = error.issues();
    assert_eq!(issues.len(), 1, "expected one issue, got: {error}");
    issues[0].clone()
}

fn assert_issue(text: &str, field: &str, line: u64, problem_part: &str) {
    let issue = single_issue(text);
    assert_eq!(issue.field, field, "wrong field in {issue:?}");
    assert_eq!(
        issue.position.map(|p| p.0),
        Some(line),
        "wrong line in {issue:?}"
    );
    assert!(
        issue.problem.contains(problem_part),
        "`{}` should contain `{problem_part}`",
        issue.problem
    );
}

#[test]
fn an_empty_file_says_what_an_endpoint_file_needs() {
    for text in ["", "\n\n", "# blue only, for now\n", "---\n# nothing yet\n"] {
        let issue = single_issue(text);
        assert_eq!(issue.field, "", "{text:?}");
        assert!(
            issue.problem.contains("the file is empty"),
            "{text:?}: {issue:?}"
        );
        assert!(
            issue.problem.contains("`deployments`"),
            "{text:?}: {issue:?}"
        );
    }
    // One real key is no longer empty: the missing fields are named instead.
    assert!(
        !single_issue("name: my-endpoint\n")
            .problem
            .contains("empty")
    );
}

#[test]
fn the_documented_example_is_valid() {
    let config = EndpointConfig::parse(VALID).expect("valid");
    assert_eq!(config.name, "my-endpoint");
    assert_eq!(config.deployments.len(), 2);
    assert_eq!(config.deployments[0].traffic, 90);
    assert_eq!(config.deployments[1].traffic, 10);
    assert_eq!(config.deployments[0].model, "model-1:1");
    assert_eq!(
        config.deployments[0].instances[1].to_string(),
        "http://127.0.0.1:9002"
    );
    assert_eq!(
        config.summary(),
        "my-endpoint: blue 90% (2 instances), green 10% (1 instance)"
    );
}

#[test]
fn azure_keys_are_accepted_and_ignored() {
    let text = "\
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
name: my-endpoint
auth_mode: key
keys_file: keys.yaml
description: an endpoint
tags: {team: ml}
traffic: {blue: 100}
deployments:
  - name: blue
    type: managed
    endpoint_name: my-endpoint
    model: azureml:model-1:1
    code_configuration: {code: ../model-1/onlinescoring/, scoring_script: score.py}
    environment: {conda_file: env.yml, image: mcr.microsoft.com/azureml/minimal}
    instance_type: Standard_DS3_v2
    scale_settings: {type: default, instance_count: 1}
    request_settings: {request_timeout_ms: 3000}
    readiness_probe: {period: 5}
    liveness_probe: {period: 5}
    app_insights_enabled: true
    instances: [http://localhost:9001]
";
    let config = EndpointConfig::parse(text).expect("valid");
    assert_eq!(config.auth_mode, AuthMode::Key);
    assert_eq!(config.keys_file, Some(PathBuf::from("keys.yaml")));
    assert_eq!(config.deployments[0].model, "azureml:model-1:1");
    assert_eq!(
        config.deployments[0].request_settings.request_timeout,
        Duration::from_secs(3)
    );
}

#[test]
fn a_deployment_left_out_of_traffic_gets_zero() {
    let text = VALID.replace("traffic: {blue: 90, green: 10}", "traffic: {blue: 100}");
    let config = EndpointConfig::parse(&text).expect("valid");
    assert_eq!(config.deployments[1].traffic, 0);
}

#[test]
fn all_zero_traffic_is_valid() {
    let text = VALID.replace(
        "traffic: {blue: 90, green: 10}",
        "traffic: {blue: 0, green: 0}",
    );
    let config = EndpointConfig::parse(&text).expect("valid");
    assert_eq!(config.total_traffic(), 0);
}

#[test]
fn a_misspelled_top_level_key_is_rejected_with_a_suggestion() {
    let text = VALID.replace("traffic:", "trafic:");
    assert_issue(&text, "trafic", 2, "did you mean `traffic`?");
}

#[test]
fn a_misspelled_deployment_key_is_rejected_with_a_suggestion() {
    let text = VALID.replace("instance_count: 2", "instance_cont: 2");
    assert_issue(
        &text,
        "deployments[0].instance_cont",
        6,
        "did you mean `instance_count`?",
    );
}

#[test]
fn traffic_must_add_up_to_100() {
    let text = VALID.replace("green: 10", "green: 20");
    assert_issue(&text, "traffic", 2, "add up to 110");
}

#[test]
fn traffic_must_be_a_percentage() {
    let text = VALID.replace("{blue: 90, green: 10}", "{blue: 110, green: -10}");
    let error = EndpointConfig::parse(&text).expect_err("invalid");
    let fields: Vec<&str> = error.issues().iter().map(|i| i.field.as_str()).collect();
    assert_eq!(fields, ["traffic.blue", "traffic.green"], "{error}");
    assert!(
        error.issues()[0]
            .problem
            .contains("110 is not a percentage")
    );
}

#[test]
fn traffic_must_be_a_whole_number() {
    let text = VALID.replace("green: 10", "green: 10.5");
    assert_issue(&text, "traffic.green", 2, "whole number");
    let text = VALID.replace("green: 10", "green: 10%");
    assert_issue(&text, "traffic.green", 2, "like `10` (no `%` sign)");
}

#[test]
fn traffic_must_name_a_deployment() {
    let text = VALID.replace("green: 10", "gren: 10");
    assert_issue(&text, "traffic.gren", 2, "did you mean `green`?");
}

#[test]
fn names_follow_azures_rule() {
    for (bad, why) in [
        ("bl", "3 to 32"),
        ("1blue", "start with a letter"),
        ("blue_v2", "letters, digits and dashes"),
        ("blue--v2", "two dashes"),
        ("blue-", "end with a dash"),
        ("a-name-that-is-far-too-long-for-azure", "3 to 32"),
    ] {
        let text = VALID
            .replace("- name: blue", &format!("- name: {bad}"))
            .replace("{blue: 90", &format!("{{{bad}: 90"));
        let error = EndpointConfig::parse(&text).expect_err(bad);
        let issue = &error.issues()[0];
        assert_eq!(issue.field, "deployments[0].name", "{error}");
        assert!(issue.problem.contains(why), "{bad}: {}", issue.problem);
    }
    let text = VALID.replace("name: my-endpoint", "name: my_endpoint");
    assert_issue(&text, "name", 1, "letters, digits and dashes");
}

#[test]
fn deployment_names_are_unique() {
    let text = VALID.replace("- name: green", "- name: blue");
    let error = EndpointConfig::parse(&text).expect_err("invalid");
    let issue = &error.issues()[0];
    assert_eq!(issue.field, "deployments[1].name");
    assert!(issue.problem.contains("listed twice"));
}

#[test]
fn a_deployment_needs_an_instance() {
    let text = VALID
        .replace("    instances: [http://127.0.0.1:9003]\n", "")
        .replace("{blue: 90, green: 10}", "{blue: 100}");
    assert_issue(&text, "deployments[1].instances", 8, "no instances");
}

#[test]
fn instance_urls_are_absolute_http() {
    for (bad, why) in [
        ("127.0.0.1:9003", "not an absolute URL"),
        ("/score", "not an absolute URL"),
        ("ftp://127.0.0.1:9003", "http:// or https://"),
        ("http://127.0.0.1:9003/score", "give only the origin"),
        ("http://user@127.0.0.1:9003", "credentials"),
        ("http://bad host", "not a URL"),
    ] {
        let text = VALID.replace("http://127.0.0.1:9003", bad);
        let error = EndpointConfig::parse(&text).expect_err(bad);
        let issue = &error.issues()[0];
        assert_eq!(issue.field, "deployments[1].instances[0]", "{bad}: {error}");
        assert!(issue.problem.contains(why), "{bad}: {}", issue.problem);
        assert_eq!(issue.position.map(|p| p.0), Some(10));
    }
}

#[test]
fn an_instance_is_listed_once() {
    let text = VALID.replace("http://127.0.0.1:9002", "http://127.0.0.1:9001");
    assert_issue(&text, "deployments[0].instances[1]", 7, "listed twice");
}

#[test]
fn instance_count_must_match_the_instances() {
    let text = VALID.replace("instance_count: 2", "instance_count: 3");
    assert_issue(
        &text,
        "deployments[0].instance_count",
        6,
        "says 3 but 2 instance URLs",
    );
    let text = VALID.replace(
        "instance_count: 2",
        "scale_settings: {type: default, instance_count: 1}",
    );
    assert_issue(
        &text,
        "deployments[0].scale_settings.instance_count",
        6,
        "says 1 but 2",
    );
}

#[test]
fn at_most_20_deployments() {
    let mut text = String::from("name: big\nauth_mode: none\ntraffic: {d1: 100}\ndeployments:\n");
    for i in 1..=21 {
        text.push_str(&format!(
            "  - name: d{i:02}\n    instances: [http://127.0.0.1:{}]\n",
            9000 + i
        ));
    }
    let text = text.replace("{d1: 100}", "{d01: 100}");
    assert_issue(&text, "deployments", 45, "at most 20");
}

#[test]
fn at_most_50_instances() {
    let urls: Vec<String> = (0..51)
        .map(|i| format!("http://127.0.0.1:{}", 10000 + i))
        .collect();
    let text = format!(
        "name: big\nauth_mode: none\ntraffic: {{blue: 100}}\ndeployments:\n  - name: blue\n    instances: [{}]\n",
        urls.join(", ")
    );
    assert_issue(&text, "deployments[0].instances", 6, "at most 50");
}

#[test]
fn mirroring_copies_live_traffic_to_one_deployment_without_live_traffic() {
    let text = VALID.replace(
        "traffic: {blue: 90, green: 10}",
        "traffic: {blue: 100}\nmirror_traffic: {green: 10}",
    );
    let config = EndpointConfig::parse(&text).expect("valid");
    assert_eq!(config.mirrored().map(|d| d.name.as_str()), Some("green"));
    assert_eq!(
        (config.deployments[0].mirror, config.deployments[1].mirror),
        (0, 10)
    );
    assert_eq!(
        config.summary(),
        "my-endpoint: blue 100% (2 instances), green 10% mirrored (1 instance)"
    );
    // Written back out, the file reads back to the same config.
    let again = EndpointConfig::parse(&config.to_file_value().to_string()).expect("valid");
    assert_eq!(again, config);

    // 0 is no mirror at all, as in Azure.
    let off = text.replace("green: 10}", "green: 0}");
    assert_eq!(EndpointConfig::parse(&off).expect("valid").mirrored(), None);
}

#[test]
fn mirroring_follows_azures_rules() {
    let mirror = |traffic: &str, mirror: &str| {
        VALID.replace(
            "traffic: {blue: 90, green: 10}",
            &format!("traffic: {traffic}\nmirror_traffic: {mirror}"),
        )
    };
    assert_issue(
        &mirror("{blue: 100}", "{green: 51}"),
        "mirror_traffic.green",
        3,
        "from 0 to 50 percent",
    );
    assert_issue(
        &mirror("{blue: 90, green: 10}", "{green: 10}"),
        "mirror_traffic.green",
        3,
        "live traffic or mirrored traffic, not both",
    );
    assert_issue(
        &mirror("{blue: 100}", "{gren: 10}"),
        "mirror_traffic.gren",
        3,
        "did you mean `green`?",
    );
    // After the flight, the old version can shadow the new one: a mirror at 0 names no one.
    let back = EndpointConfig::parse(&mirror("{green: 100}", "{blue: 10, green: 0}"));
    assert_eq!(back.expect("valid").mirrored().map(|d| d.mirror), Some(10));

    let three = format!(
        "{}  - name: red\n    instances: [http://127.0.0.1:9004]\n",
        mirror("{blue: 100}", "{green: 10, red: 5}").replace("auth_mode: none\n", "")
    ) + "auth_mode: none\n";
    assert_issue(&three, "mirror_traffic", 3, "one deployment at most");
}

#[test]
fn a_sticky_header_is_read_lowercase_and_written_back() {
    let text = VALID.replace(
        "auth_mode: none",
        "auth_mode: none\nsticky_header: X-User-Id",
    );
    let config = EndpointConfig::parse(&text).expect("valid");
    assert_eq!(
        config.sticky_header.as_ref().map(http::HeaderName::as_str),
        Some("x-user-id")
    );
    let again = EndpointConfig::parse(&config.to_file_value().to_string()).expect("valid");
    assert_eq!(again, config);
    assert_eq!(
        EndpointConfig::parse(VALID).expect("valid").sticky_header,
        None
    );
}

#[test]
fn a_sticky_header_must_be_one_a_client_sends_about_itself() {
    let sticky = |header: &str| {
        VALID.replace(
            "auth_mode: none",
            &format!("auth_mode: none\nsticky_header: {header}"),
        )
    };
    assert_issue(
        &sticky("\"user id\""),
        "sticky_header",
        12,
        "is not a header name",
    );
    assert_issue(&sticky("\"\""), "sticky_header", 12, "like `x-user-id`");
    assert_issue(
        &sticky("azureml-model-deployment"),
        "sticky_header",
        12,
        "already pins a request",
    );
    assert_issue(
        &sticky("Connection"),
        "sticky_header",
        12,
        "`connection` describes the connection",
    );
}

#[test]
fn an_unknown_auth_mode_is_rejected() {
    let text = VALID.replace("auth_mode: none", "auth_mode: password");
    assert_issue(&text, "auth_mode", 11, "use `key` or `none`");
    let text = VALID.replace("auth_mode: none", "auth_mode: aml_token");
    assert_issue(
        &text,
        "auth_mode",
        11,
        "use `key` (with keys_file) or `none`",
    );
}

#[test]
fn a_duplicate_key_is_rejected() {
    let text = VALID.replace("name: my-endpoint", "name: my-endpoint\nname: other");
    let issue = single_issue(&text);
    assert!(issue.problem.contains("duplicate"), "{issue:?}");
    assert_eq!(issue.position.map(|p| p.0), Some(2));
}

#[test]
fn broken_yaml_reports_a_position() {
    let text = VALID.replace("{blue: 90, green: 10}", "{blue: 90, green: 10");
    let issue = single_issue(&text);
    assert!(issue.position.is_some(), "{issue:?}");
}

#[test]
fn a_missing_name_is_reported() {
    let text = VALID.replace("name: my-endpoint\n", "");
    let issue = single_issue(&text);
    assert!(
        issue.problem.contains("missing required key `name`"),
        "{issue:?}"
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = VALID
        .replace("traffic:", "traffic: {blue: 50}\nold:")
        .replace("http://127.0.0.1:9003", "nonsense");
    // The unknown key stops deserialisation, so only it is reported first ...
    assert_eq!(single_issue(&text).field, "old");
    // ... while rule violations are all collected.
    let text = VALID
        .replace("green: 10", "green: 20")
        .replace("http://127.0.0.1:9003", "nonsense");
    let error = EndpointConfig::parse(&text).expect_err("invalid");
    assert_eq!(error.issues().len(), 2, "{error}");
}

#[test]
fn rendering_shows_the_file_line_and_a_caret() {
    let text = VALID.replace("traffic:", "trafic:");
    let error = EndpointConfig::parse(&text)
        .expect_err("invalid")
        .in_file(Path::new("endpoint.yaml"));
    let rendered = error.render();
    assert!(
        rendered.starts_with(
            "endpoint.yaml:2:1: trafic: unknown key `trafic`; did you mean `traffic`?"
        ),
        "{rendered}"
    );
    assert!(
        rendered.contains("2 | trafic: {blue: 90, green: 10}\n  | ^"),
        "{rendered}"
    );
}

#[test]
fn a_model_that_is_neither_text_nor_a_mapping_is_explained() {
    let text = VALID.replace("model: {name: model-2, version: 1}", "model: [model-2]");
    assert_issue(&text, "deployments[1].model", 9, "a model reference like");
}

#[test]
fn a_misspelled_model_key_is_rejected() {
    let text = VALID.replace(
        "model: {name: model-2, version: 1}",
        "model: {name: model-2, verison: 1}",
    );
    assert_issue(
        &text,
        "deployments[1].model.verison",
        9,
        "did you mean `version`?",
    );
}

#[test]
fn key_auth_needs_a_keys_file_even_by_default() {
    let text = VALID.replace("auth_mode: none\n", "");
    let issue = single_issue(&text);
    assert_eq!(issue.field, "auth_mode");
    assert!(issue.problem.contains("defaults to `key`"), "{issue:?}");
    let text = VALID.replace("auth_mode: none", "auth_mode: key");
    assert_issue(&text, "auth_mode", 11, "no `keys_file` is given");
    let text = VALID.replace("auth_mode: none", "auth_mode: none\nkeys_file: k.yaml");
    assert_issue(&text, "keys_file", 12, "auth_mode is `none`");
}

#[test]
fn request_settings_have_azures_defaults() {
    let config = EndpointConfig::parse(VALID).expect("valid");
    let settings = config.deployments[0].request_settings;
    assert_eq!(settings.request_timeout, Duration::from_millis(5000));
    assert_eq!(settings.max_concurrent_requests_per_instance, 1);
    assert_eq!(settings.max_queue_wait, Duration::from_millis(500));
    assert_eq!(config.deployments[0].readiness_probe, None);
}

#[test]
fn request_settings_are_read_and_range_checked() {
    let text = VALID.replace(
        "    instance_count: 2\n",
        "    instance_count: 2\n    request_settings: {request_timeout_ms: 250, max_concurrent_requests_per_instance: 8, max_queue_wait_ms: 0}\n",
    );
    let settings = EndpointConfig::parse(&text).expect("valid").deployments[0].request_settings;
    assert_eq!(settings.request_timeout, Duration::from_millis(250));
    assert_eq!(settings.max_concurrent_requests_per_instance, 8);
    assert_eq!(settings.max_queue_wait, Duration::ZERO);

    let text = VALID.replace(
        "    instance_count: 2\n",
        "    instance_count: 2\n    request_settings: {request_timeout_ms: 200000}\n",
    );
    assert_issue(
        &text,
        "deployments[0].request_settings.request_timeout_ms",
        7,
        "from 1 to 180000",
    );
    let text = VALID.replace(
        "    instance_count: 2\n",
        "    instance_count: 2\n    request_settings: {max_concurrent_request_per_instance: 2}\n",
    );
    assert_issue(
        &text,
        "deployments[0].request_settings.max_concurrent_request_per_instance",
        7,
        "did you mean `max_concurrent_requests_per_instance`?",
    );
}

#[test]
fn a_readiness_probe_is_read_with_defaults() {
    let text = VALID.replace(
        "    instance_count: 2\n",
        "    instance_count: 2\n    readiness_probe: {path: /health, period: 1}\n",
    );
    let probe = EndpointConfig::parse(&text).expect("valid").deployments[0]
        .readiness_probe
        .clone()
        .expect("probe");
    assert_eq!(
        probe.check,
        ProbeCheck::Http {
            path: "/health".into()
        }
    );
    assert_eq!(probe.period, Duration::from_secs(1));
    assert_eq!(probe.timeout, Duration::from_secs(2));
    assert_eq!(probe.initial_delay, Duration::ZERO);
    assert_eq!((probe.success_threshold, probe.failure_threshold), (1, 30));

    let text = VALID.replace(
        "    instance_count: 2\n",
        "    instance_count: 2\n    readiness_probe: {path: health}\n",
    );
    assert_issue(
        &text,
        "deployments[0].readiness_probe.path",
        7,
        "must start with `/`",
    );
}

#[test]
fn the_file_shaped_value_reads_back_to_the_same_config() {
    let text = VALID.replace(
        "    instance_count: 2\n",
        "    instance_count: 2\n    request_settings: {request_timeout_ms: 250}\n    readiness_probe: {path: /health, port: 8081}\n",
    );
    let config = EndpointConfig::parse(&text).expect("valid");
    let again = EndpointConfig::parse(&config.to_file_value().to_string()).expect("valid");
    assert_eq!(config, again);
}

#[test]
fn the_upstream_protocol_is_http1_or_http2() {
    let config = EndpointConfig::parse(VALID).expect("valid");
    assert_eq!(config.deployments[0].protocol, UpstreamProtocol::Http1);
    let text = VALID.replace(
        "    instance_count: 2\n",
        "    instance_count: 2\n    protocol: http2\n",
    );
    let config = EndpointConfig::parse(&text).expect("valid");
    assert_eq!(config.deployments[0].protocol, UpstreamProtocol::Http2);
    let text = VALID.replace(
        "    instance_count: 2\n",
        "    instance_count: 2\n    protocol: grpc\n",
    );
    assert_issue(
        &text,
        "deployments[0].protocol",
        7,
        "use `http1` or `http2`",
    );
}

#[test]
fn a_missing_colon_is_named_as_such() {
    let issue = single_issue("name my-endpoint\ntraffic: {blue: 100}\n");
    assert_eq!(issue.position.map(|(line, _)| line), Some(1));
    assert!(issue.problem.contains("colon"), "{issue:?}");
}

#[test]
fn an_alias_bomb_is_refused_in_plain_words_about_the_whole_file() {
    let mut text =
        "name: my-endpoint\ntags:\n  t0: &a0 [v, v, v, v, v, v, v, v, v, v]\n".to_string();
    for level in 1..9 {
        let uses = vec![format!("*a{}", level - 1); 10].join(", ");
        text.push_str(&format!("  t{level}: &a{level} [{uses}]\n"));
    }
    let issue = single_issue(&text);
    assert_eq!(issue.field, "", "a limit on the whole file, not on a field");
    assert!(issue.problem.contains("aliases are expanded"), "{issue:?}");
    assert!(
        !issue.problem.contains("budget") && !issue.problem.contains('{'),
        "{issue:?}"
    );
}

#[test]
fn a_grpc_probe_names_its_service_and_needs_http2() {
    let with = |lines: &str| {
        VALID.replace(
            "    instance_count: 2\n",
            &format!("    instance_count: 2\n{lines}"),
        )
    };
    let text = with("    protocol: http2\n    readiness_probe: {grpc: {service: my.Model}}\n");
    let config = EndpointConfig::parse(&text).expect("valid");
    let probe = config.deployments[0]
        .readiness_probe
        .clone()
        .expect("probe");
    assert_eq!(
        probe.check,
        ProbeCheck::Grpc {
            service: "my.Model".into()
        }
    );
    // It reads back the same, as `show` and the rollout's edits write it.
    let again = EndpointConfig::parse(&config.to_file_value().to_string()).expect("valid");
    assert_eq!(config, again);
    let text = with("    protocol: http2\n    readiness_probe: {grpc: {}}\n");
    let probe = EndpointConfig::parse(&text).expect("valid").deployments[0]
        .readiness_probe
        .clone()
        .expect("probe");
    assert_eq!(
        probe.check,
        ProbeCheck::Grpc {
            service: String::new()
        }
    );

    assert_issue(
        &with("    readiness_probe: {grpc: {service: \"\"}}\n"),
        "deployments[0].readiness_probe.grpc",
        7,
        "add `protocol: http2`",
    );
    assert_issue(
        &with("    protocol: http2\n    readiness_probe: {path: /health, grpc: {}}\n"),
        "deployments[0].readiness_probe.path",
        8,
        "not both",
    );
    assert_issue(
        &with("    protocol: http2\n    readiness_probe: {grpc: {name: x}}\n"),
        "deployments[0].readiness_probe.grpc.name",
        8,
        "service",
    );
}
