//! The permissions KIC needs, as the kong chart's controller release grants
//! them: its ClusterRole and Role, read once from the chart's own rendering
//! (`tests/fixtures/chart-2.52.0-controller-release.yaml` and
//! `chart-2.30.0-controller-release.yaml`, `helm template` of kong/kong
//! 2.52.0 and 2.30.0 with the hand-off's controller values). A rule added
//! after chart 2.30.0 says `since: V2_52`; `tests/handoff.rs` checks the
//! live ServiceAccounts against the fixtures themselves, independently of
//! this table.
//!
//! Left out, each because another row already grants it: the Role's
//! leader-election rule on one ConfigMap by name (the rule on all ConfigMaps
//! and Leases of the namespace covers it), and the nonsensical pairs of that
//! rule's group × resource product (`leases` in the core group,
//! `configmaps` in `coordination.k8s.io`).

/// Where a permission must hold: cluster-wide (the ClusterRole), or in the
/// release's namespace (the Role).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Namespace,
}

/// The first chart version whose controller release grants a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChartVersion(pub u32, pub u32);

pub const V2_30: ChartVersion = ChartVersion(2, 30);
pub const V2_52: ChartVersion = ChartVersion(2, 52);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub scope: Scope,
    pub group: &'static str,
    /// `resource` or `resource/subresource`.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub since: ChartVersion,
}

/// One question for a SubjectAccessReview.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub scope: Scope,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub verb: &'static str,
}

impl std::fmt::Display for Permission {
    /// As `kubectl auth can-i` takes it, with where it must hold.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.group)
        };
        let sub = self
            .subresource
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        let scope = match self.scope {
            Scope::Cluster => "cluster-wide",
            Scope::Namespace => "in the release's namespace",
        };
        write!(f, "{} {}{group}{sub} ({scope})", self.verb, self.resource)
    }
}

/// Every permission the controller release of chart `version` grants KIC
/// (`major.minor[.patch]`; an unknown or older version: the 2.30.0 set, which
/// every later chart grants too).
pub fn needed(version: Option<&str>) -> Vec<Permission> {
    let version = version.and_then(parse).unwrap_or(V2_30).max(V2_30);
    RULES
        .iter()
        .filter(|r| r.since <= version)
        .flat_map(|r| {
            let (resource, subresource) = match r.resource.split_once('/') {
                Some((res, sub)) => (res, Some(sub)),
                None => (r.resource, None),
            };
            r.verbs.iter().map(move |verb| Permission {
                scope: r.scope,
                group: r.group,
                resource,
                subresource,
                verb,
            })
        })
        .collect()
}

fn parse(version: &str) -> Option<ChartVersion> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(ChartVersion(major, minor))
}

pub const RULES: &[Rule] = &[
    Rule {
        scope: Scope::Cluster,
        group: "",
        resource: "configmaps",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "backendtlspolicies",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "backendtlspolicies/status",
        verbs: &["patch", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongcustomentities",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongcustomentities/status",
        verbs: &["get", "patch", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongupstreampolicies",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongupstreampolicies/status",
        verbs: &["get", "patch", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongconsumergroups",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongconsumergroups/status",
        verbs: &["get", "patch", "update"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "",
        resource: "events",
        verbs: &["create", "patch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "",
        resource: "nodes",
        verbs: &["list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "",
        resource: "pods",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "",
        resource: "secrets",
        verbs: &["list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "",
        resource: "services",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "",
        resource: "services/status",
        verbs: &["get", "patch", "update"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "ingressclassparameterses",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongconsumers",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongconsumers/status",
        verbs: &["get", "patch", "update"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongingresses",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongingresses/status",
        verbs: &["get", "patch", "update"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongplugins",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongplugins/status",
        verbs: &["get", "patch", "update"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "tcpingresses",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "tcpingresses/status",
        verbs: &["get", "patch", "update"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "udpingresses",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "udpingresses/status",
        verbs: &["get", "patch", "update"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "extensions",
        resource: "ingresses",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "extensions",
        resource: "ingresses/status",
        verbs: &["get", "patch", "update"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "gateways",
        verbs: &["get", "list", "update", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "gateways/status",
        verbs: &["get", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "httproutes",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "httproutes/status",
        verbs: &["get", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "referencegrants",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "referencegrants/status",
        verbs: &["get"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "tcproutes",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "tcproutes/status",
        verbs: &["get", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "tlsroutes",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "tlsroutes/status",
        verbs: &["get", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "udproutes",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "udproutes/status",
        verbs: &["get", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "grpcroutes",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "grpcroutes/status",
        verbs: &["get", "patch", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "networking.k8s.io",
        resource: "ingresses",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "networking.k8s.io",
        resource: "ingresses/status",
        verbs: &["get", "patch", "update"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "konglicenses",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "konglicenses/status",
        verbs: &["get", "patch", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongvaults",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongvaults/status",
        verbs: &["get", "patch", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongclusterplugins",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "configuration.konghq.com",
        resource: "kongclusterplugins/status",
        verbs: &["get", "patch", "update"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "apiextensions.k8s.io",
        resource: "customresourcedefinitions",
        verbs: &["list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "gatewayclasses",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "gateway.networking.k8s.io",
        resource: "gatewayclasses/status",
        verbs: &["get", "update"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "",
        resource: "namespaces",
        verbs: &["get", "list", "watch"],
        since: V2_52,
    },
    Rule {
        scope: Scope::Cluster,
        group: "networking.k8s.io",
        resource: "ingressclasses",
        verbs: &["get", "list", "watch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Namespace,
        group: "",
        resource: "configmaps",
        verbs: &[
            "get", "create", "list", "watch", "update", "patch", "delete",
        ],
        since: V2_30,
    },
    Rule {
        scope: Scope::Namespace,
        group: "",
        resource: "pods",
        verbs: &["get"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Namespace,
        group: "",
        resource: "secrets",
        verbs: &["get"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Namespace,
        group: "",
        resource: "namespaces",
        verbs: &["get"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Namespace,
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
        since: V2_30,
    },
    Rule {
        scope: Scope::Namespace,
        group: "",
        resource: "events",
        verbs: &["create", "patch"],
        since: V2_30,
    },
    Rule {
        scope: Scope::Namespace,
        group: "",
        resource: "services",
        verbs: &["get"],
        since: V2_30,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_version_chooses_the_rules() {
        let cases = [
            (Some("2.52.0"), 176),
            (Some("2.60.1"), 176),
            (Some("2.30.0"), 100),
            (Some("2.40.0"), 100),
            (Some("2.12.0"), 100),
            (Some("not-a-version"), 100),
            (None, 100),
        ];
        for (version, count) in cases {
            assert_eq!(needed(version).len(), count, "chart {version:?}");
        }
        let secrets = needed(None)
            .into_iter()
            .find(|p| p.resource == "secrets" && p.verb == "list")
            .expect("KIC lists Secrets");
        assert_eq!(secrets.to_string(), "list secrets (cluster-wide)");
    }
}
