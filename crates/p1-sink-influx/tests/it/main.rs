//! Integration tests of p1-sink-influx that need no server: the deploy stack around it
//! (compose file, Grafana provisioning and dashboards) is consistent. The tests against real
//! InfluxDB and VictoriaMetrics servers run the `p1gw` binary: crates/p1gw/tests/it/influx.rs.

mod deploy;
