//! `deploy/`: compose.yaml and the Grafana files parse, and what they refer to exists — mounted
//! paths in the repository, datasource uids between dashboards and provisioning, services named
//! in URLs. (No Docker engine here: the stack itself is not started.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Value {
    yaml(&deploy().join("compose.yaml"))
}

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"].as_object().expect("services")
}

/// A service's volume entries as (source, target).
fn mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|m| {
                    let text = m.as_str().expect("short volume syntax");
                    let mut parts = text.split(':');
                    let source = parts.next().expect("source").to_owned();
                    let target = parts.next().unwrap_or_else(|| panic!("{text}: a target"));
                    (source, target.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_bind(source: &str) -> bool {
    source.starts_with("./") || source.starts_with("../") || source.starts_with('/')
}

/// The bind mount of `service` with container path `target`, as a path in the repository.
fn bind_source(service: &Value, target: &str) -> PathBuf {
    let (source, _) = mounts(service)
        .into_iter()
        .find(|(_, t)| t == target)
        .unwrap_or_else(|| panic!("a mount at {target}"));
    assert!(is_bind(&source), "{target} is a bind mount");
    deploy().join(source)
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = deploy().join("grafana/dashboards");
    let mut out: Vec<(PathBuf, Value)> = std::fs::read_dir(&dir)
        .expect("dashboards dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v = json(&p);
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn datasources() -> Vec<Value> {
    let file = deploy().join("grafana/provisioning/datasources/influxdb.yaml");
    let v = yaml(&file);
    assert_eq!(v["apiVersion"], 1);
    v["datasources"].as_array().expect("datasources").clone()
}

/// The host of a URL (`http://influxdb:8086` → `influxdb`).
fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

#[test]
fn compose_names_the_stack_and_every_reference_resolves() {
    let compose = compose();
    let services = services(&compose);
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for needed in ["p1gw", "mosquitto", "influxdb", "grafana", "homeassistant"] {
        assert!(names.contains(needed), "service {needed}: {names:?}");
    }
    assert!(
        services["influxdb"]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("influxdb:1.8")),
        "InfluxDB 1.8"
    );
    let named: BTreeSet<&str> = compose["volumes"]
        .as_object()
        .expect("top-level volumes")
        .keys()
        .map(String::as_str)
        .collect();
    for (name, service) in services {
        assert!(
            service.get("image").is_some() || service.get("build").is_some(),
            "{name}: an image or a build"
        );
        if let Some(build) = service.get("build") {
            let context = deploy().join(build["context"].as_str().expect("context"));
            assert!(
                context.is_dir(),
                "{name}: build context {}",
                context.display()
            );
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(dockerfile.is_file(), "{name}: {}", dockerfile.display());
        }
        for (source, target) in mounts(service) {
            assert!(target.starts_with('/'), "{name}: {target}");
            if is_bind(&source) {
                let path = deploy().join(&source);
                assert!(
                    path.exists(),
                    "{name}: mounted {} is missing",
                    path.display()
                );
            } else {
                assert!(
                    named.contains(source.as_str()),
                    "{name}: volume {source} not declared"
                );
            }
        }
        if let Some(deps) = service.get("depends_on") {
            for dep in deps.as_array().expect("depends_on list") {
                let dep = dep.as_str().expect("name");
                assert!(names.contains(dep), "{name} depends on unknown {dep}");
            }
        }
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().expect("ports as strings");
            let (host_port, container_port) = port.split_once(':').expect("host:container");
            host_port.parse::<u16>().expect("host port");
            container_port.parse::<u16>().expect("container port");
        }
    }
}

#[test]
fn p1gw_runs_the_mounted_config_which_points_at_the_stack() {
    let compose = compose();
    let services = services(&compose);
    let p1gw = &services["p1gw"];
    let command: Vec<&str> = p1gw["command"]
        .as_array()
        .expect("command list")
        .iter()
        .map(|c| c.as_str().expect("string"))
        .collect();
    let at = command
        .iter()
        .position(|c| *c == "--config")
        .expect("--config");
    let config_path = command[at + 1];
    let config = read(&bind_source(p1gw, config_path));
    // Every URL in the config names a service of the stack (its port published inside).
    let urls: Vec<&str> = config
        .lines()
        .filter(|l| l.trim_start().starts_with("url"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(urls.len() >= 2, "{urls:?}");
    for url in urls {
        assert!(services.contains_key(host(url)), "{url}: no such service");
    }
    assert!(
        config.contains("listen = \"0.0.0.0:9600\""),
        "reachable from outside the container"
    );
    assert!(
        mounts(p1gw).iter().any(|(_, t)| t == "/var/lib/p1gw"),
        "the spool survives the container"
    );
}

#[test]
fn grafana_is_provisioned_from_the_repository() {
    let compose = compose();
    let services = services(&compose);
    let grafana = &services["grafana"];
    let provisioning = bind_source(grafana, "/etc/grafana/provisioning");
    assert_eq!(provisioning, deploy().join("./grafana/provisioning"));
    let providers = yaml(&provisioning.join("dashboards/p1gw.yaml"));
    let providers = providers["providers"].as_array().expect("providers");
    assert_eq!(providers.len(), 1);
    let path = providers[0]["options"]["path"].as_str().expect("path");
    let mounted = bind_source(grafana, path);
    assert_eq!(
        std::fs::canonicalize(&mounted).expect("dashboards dir"),
        std::fs::canonicalize(deploy().join("grafana/dashboards")).expect("dir"),
        "the provider reads the mounted dashboards"
    );
    // No Flux dashboard: none could be run against a server here (docs/influx.md, "Grafana").
    assert_eq!(dashboards().len(), 1, "InfluxQL");
    for ds in datasources() {
        let url = ds["url"].as_str().expect("url");
        assert!(services.contains_key(host(url)), "{url}: no such service");
    }
}

/// Every datasource reference in a dashboard: (where, uid).
fn datasource_refs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut note = |at: String, ds: &Value| {
        if ds.is_null() {
            return;
        }
        let uid = ds["uid"].as_str().unwrap_or_else(|| panic!("{at}: uid"));
        assert_eq!(ds["type"], "influxdb", "{at}");
        out.push((at, uid.to_owned()));
    };
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title");
        note(format!("panel {title}"), &panel["datasource"]);
        for target in panel["targets"].as_array().expect("targets") {
            note(
                format!("panel {title} target {}", target["refId"]),
                &target["datasource"],
            );
        }
    }
    for var in dashboard["templating"]["list"].as_array().expect("list") {
        note(format!("variable {}", var["name"]), &var["datasource"]);
    }
    out
}

#[test]
fn dashboards_choose_their_datasource_by_variable_and_define_their_variables() {
    let sources = datasources();
    assert_eq!(sources.len(), 1, "one InfluxQL datasource");
    assert_eq!(sources[0]["type"], "influxdb");
    assert_eq!(sources[0]["isDefault"], true, "the variable's default");
    assert!(
        sources[0]["jsonData"]["version"].is_null(),
        "InfluxQL, not Flux"
    );
    let mut dashboard_uids = BTreeSet::new();
    for (path, dashboard) in dashboards() {
        let name = path.display().to_string();
        assert!(dashboard_uids.insert(dashboard["uid"].as_str().expect("uid").to_owned()));
        // Any Grafana: no datasource is named by uid; a `datasource` variable offers every
        // InfluxDB datasource, and the import lists what the dashboard needs.
        let list = dashboard["templating"]["list"].as_array().expect("list");
        let ds_var = list
            .iter()
            .find(|v| v["type"] == "datasource")
            .unwrap_or_else(|| panic!("{name}: a datasource variable"));
        assert_eq!(ds_var["query"], "influxdb", "{name}");
        let ds_ref = format!("${{{}}}", ds_var["name"].as_str().expect("name"));
        let refs = datasource_refs(&dashboard);
        assert!(!refs.is_empty(), "{name}");
        for (at, uid) in &refs {
            assert_eq!(uid, &ds_ref, "{name}: {at} must use the variable");
        }
        let requires = dashboard["__requires"].as_array().expect("__requires");
        assert!(
            requires.iter().any(|r| r["id"] == "influxdb"),
            "{name}: __requires names the InfluxDB plugin"
        );
        let variables: BTreeSet<&str> = list
            .iter()
            .map(|v| v["name"].as_str().expect("name"))
            .collect();
        let mut ids = BTreeSet::new();
        let mut queried = String::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            assert!(
                ids.insert(panel["id"].as_u64().expect("id")),
                "{name}: panel ids unique"
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {}", panel["title"]);
            for target in targets {
                let query = target["query"].as_str().expect("query");
                assert!(!query.trim().is_empty());
                assert_eq!(target["rawQuery"], true, "{query}");
                queried.push_str(query);
                for var in used_variables(query) {
                    assert!(
                        variables.contains(var.as_str())
                            || var.starts_with("__")
                            || var == "timeFilter",
                        "{name}: {query} uses ${var}, which is not defined"
                    );
                }
            }
        }
        // A panel for every measurement the sink writes (docs/influx.md), per-phase power and
        // the tariffs.
        for measurement in [
            "electricity",
            "gas",
            "water",
            "heat",
            "hot_water",
            "cooling",
        ] {
            assert!(
                queried.contains(&format!("FROM \"{measurement}\"")),
                "{name}: no panel reads {measurement}"
            );
        }
        for field in [
            "power_import_l1",
            "energy_import_tariff1",
            "tariff_indicator",
        ] {
            assert!(queried.contains(field), "{name}: no panel shows {field}");
        }
    }
}

/// `$name` and `${name}` in a query (regex anchors `$/` and `$` at the end are not variables).
fn used_variables(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let braced = rest.starts_with('{');
        let body = if braced { &rest[1..] } else { rest };
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[test]
fn variables_are_found_in_queries() {
    assert_eq!(
        used_variables(
            r#"WHERE "meter" =~ /^$meter$/ AND $timeFilter GROUP BY time($__interval) tz('$tz') ${bucket}"#
        ),
        ["meter", "timeFilter", "__interval", "tz", "bucket"]
    );
}
