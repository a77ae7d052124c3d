//! Prometheus figures of the policy engine, the workflows and the plugins, read at scrape time:
//! the host's generation, the policy generation, counts, reload errors, audit records written and
//! dropped.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::generation::Generations;
use crate::plugins::{LoadStatus, PluginRegistry};
use crate::policy::PolicyEngine;
use crate::workflow::WorkflowSet;

/// Reads the engine, the workflow set and the plugin registry on every scrape.
pub struct HostCollector {
    /// The policy engine.
    pub policy: Arc<PolicyEngine>,
    /// The workflows.
    pub workflows: Arc<WorkflowSet>,
    /// The plugins.
    pub plugins: Arc<PluginRegistry>,
    /// The generation runs pin.
    pub generations: Arc<Generations>,
}

impl std::fmt::Debug for HostCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCollector").finish_non_exhaustive()
    }
}

impl Collector for HostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut gauge = |name: &str, help: &str, rows: Vec<(Vec<(&str, String)>, f64)>| {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, value) in rows {
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
            Ok::<(), std::fmt::Error>(())
        };
        gauge(
            "generation",
            "The host's generation of policies, plugins and workflows in force (runs report it as \
             `generation`)",
            vec![(vec![], self.generations.current().id as f64)],
        )?;
        let generation = self.policy.generation();
        gauge(
            "policy_generation",
            "The id of the policy generation in force (an identifier: compare it across hosts)",
            vec![(vec![], generation.id() as f64)],
        )?;
        gauge(
            "policy_policies",
            "Cedar policies in force (compiled rules and native policies)",
            vec![(vec![], generation.policy_count() as f64)],
        )?;
        gauge(
            "policy_reload_failing",
            "1 when the last policy reload failed (the previous generation serves)",
            vec![(
                vec![],
                f64::from(u8::from(self.policy.last_error().is_some())),
            )],
        )?;
        let loaded = self.workflows.current();
        gauge(
            "workflows_loaded",
            "Workflows in service",
            vec![(vec![], loaded.workflows.len() as f64)],
        )?;
        gauge(
            "workflow_files_failing",
            "Workflow files whose latest content failed to load",
            vec![(vec![], loaded.errors.len() as f64)],
        )?;
        let plugins = self.plugins.list();
        let count = |status: LoadStatus| plugins.iter().filter(|p| p.status == status).count();
        gauge(
            "plugin_files",
            "Files in the plugins directory, by status",
            vec![
                (
                    vec![("status", "loaded".to_owned())],
                    count(LoadStatus::Loaded) as f64,
                ),
                (
                    vec![("status", "failed".to_owned())],
                    count(LoadStatus::Failed) as f64,
                ),
            ],
        )?;
        // Counts of changes since start are counters (a generation number is not a level).
        let mut counter = |name: &str, help: &str, value: u64| {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)
        };
        counter(
            "workflow_changes",
            "Reloads of the workflows directory that changed the workflows in service",
            loaded.generation,
        )?;
        counter(
            "plugin_changes",
            "Changes to the set of plugins in service since start",
            *self.plugins.changes().borrow(),
        )?;
        if let Some(audit) = self.policy.audit() {
            counter(
                "audit_records_written",
                "Access decisions written to the audit trail",
                audit.written(),
            )?;
            counter(
                "audit_records_dropped",
                "Access decisions the audit trail could not keep up with or write",
                audit.dropped(),
            )?;
            let family = encoder.encode_descriptor(
                "audit_failing",
                "1 while audit records cannot be written (requests are refused unless audit_on_failure = \"serve\")",
                None,
                MetricType::Gauge,
            )?;
            prometheus_client::metrics::gauge::ConstGauge::new(i64::from(audit.failing()))
                .encode(family)?;
            let family = encoder.encode_descriptor(
                "audit_behind",
                "1 while more audit records wait than the queue holds (requests are refused until they are written, unless audit_on_failure = \"serve\")",
                None,
                MetricType::Gauge,
            )?;
            prometheus_client::metrics::gauge::ConstGauge::new(i64::from(audit.behind()))
                .encode(family)?;
        }
        Ok(())
    }
}
