//! Facts about Kong Gateway and the Kong Ingress Controller (KIC) that the
//! migration depends on, taken from Kong's chart and KIC's source.

use std::fmt;

pub const ENV_ADMIN_LISTEN: &str = "KONG_ADMIN_LISTEN";
/// Set only in the sidecar rendering.
pub const ENV_KONG_KIC: &str = "KONG_KIC";
pub const ENV_DATABASE: &str = "KONG_DATABASE";
/// The sidecar controller dials the Admin API on localhost through this.
pub const ENV_CONTROLLER_ADMIN_URL: &str = "CONTROLLER_KONG_ADMIN_URL";
/// `namespace/name` of the Service whose EndpointSlices list the gateways.
pub const ENV_CONTROLLER_ADMIN_SVC: &str = "CONTROLLER_KONG_ADMIN_SVC";
pub const ENV_CONTROLLER_ADMIN_TOKEN: &str = "CONTROLLER_KONG_ADMIN_TOKEN";
/// The admin Service port names KIC keeps. Its default differs by version
/// (2.11/2.12 also keep the HTTP names `admin` and `kong-admin`, which KIC
/// then dials over HTTPS and never reaches), so the operator sets it.
pub const ENV_CONTROLLER_ADMIN_SVC_PORT_NAMES: &str = "CONTROLLER_KONG_ADMIN_SVC_PORT_NAMES";
/// The Lease the controllers of one install elect their leader through.
pub const ENV_CONTROLLER_ELECTION_ID: &str = "CONTROLLER_ELECTION_ID";
/// The chart's default when `CONTROLLER_ELECTION_ID` is not set.
pub const DEFAULT_ELECTION_ID: &str = "kong-ingress-controller-leader-kong";
/// Appended to the sidecars' election ID for the discovery controller: in
/// DB mode the sidecars hold their Lease until the last of them is gone, and
/// a controller sharing it would push nothing until then.
pub const DISCOVERY_ELECTION_SUFFIX: &str = "-discovery";

/// Volumes the kong chart renders into the gateway pod only while the
/// controller runs in it (`ingressController.enabled`): the admission
/// webhook's certificate and the Admin API client certificate. The chart's
/// gateway-only rendering lacks them, so the migrated template must too, or
/// the first sync of the gateway release rolls every gateway pod again.
pub const CHART_SIDECAR_ONLY_VOLUMES: [&str; 2] = ["webhook-cert", "admin-api-cert"];
/// Admin API mTLS as the kong chart renders it (`_helpers.tpl`@kong-2.52.0).
/// On the gateway (`admin.tls.client.secretName` or `caBundle`): Kong
/// demands a client certificate signed by the CA in this file...
pub const ENV_ADMIN_SSL_VERIFY_CLIENT: &str = "KONG_NGINX_ADMIN_SSL_VERIFY_CLIENT";
pub const ENV_ADMIN_SSL_CLIENT_CERTIFICATE: &str = "KONG_NGINX_ADMIN_SSL_CLIENT_CERTIFICATE";
/// ... which the volume of this name, mounted here, holds as `tls.crt`.
pub const ADMIN_CLIENT_CA_VOLUME: &str = "admin-client-ca";
pub const ADMIN_CLIENT_CA_DIR: &str = "/etc/admin-client-ca/";
/// The ConfigMap the chart renders the CA into: `<fullname>-admin-client-ca`.
pub const ADMIN_CLIENT_CA_CONFIG_MAP_SUFFIX: &str = "-admin-client-ca";
/// On the controller (`ingressController.adminApi.tls.client.enabled`): the
/// client certificate and key KIC presents, from this Secret volume.
pub const ENV_CONTROLLER_TLS_CLIENT_CERT_FILE: &str = "CONTROLLER_KONG_ADMIN_TLS_CLIENT_CERT_FILE";
pub const ENV_CONTROLLER_TLS_CLIENT_KEY_FILE: &str = "CONTROLLER_KONG_ADMIN_TLS_CLIENT_KEY_FILE";
pub const ADMIN_API_CERT_VOLUME: &str = "admin-api-cert";
pub const ADMIN_API_CERT_DIR: &str = "/etc/secrets/admin-api-cert";
/// The chart's name for the controller release's client certificate
/// Secret: `<fullname>-admin-api-keypair`.
pub const ADMIN_API_KEYPAIR_SUFFIX: &str = "-admin-api-keypair";

/// The chart's plain-HTTP Admin API port, rendered before `admin-tls`.
pub const ADMIN_HTTP_CONTAINER_PORT_NAME: &str = "admin";

/// KIC finds the admin Service's EndpointSlices by this label.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub const ADMIN_PORT: i32 = 8444;
/// The container port name the chart gives the Admin API in gateway mode.
pub const ADMIN_CONTAINER_PORT_NAME: &str = "admin-tls";
/// A port name KIC 3.x keeps by default (`--kong-admin-svc-port-names`).
pub const ADMIN_SERVICE_PORT_NAME: &str = "kong-admin-tls";

/// Gateway Discovery needs KIC 2.9; split deployments (not-ready endpoints,
/// `/status/ready`) need 2.11.
pub const MIN_KIC_VERSION: Version = Version {
    major: 2,
    minor: 11,
    patch: 0,
};

/// The readiness path that answers 200 only once Kong holds a configuration.
pub const STATUS_READY_PATH: &str = "/status/ready";
/// Kong serves `/status/ready` from 3.3 (`kong/status/ready.lua`).
/// The first KIC that dials a discovered gateway with a name a certificate
/// can carry (SNI `pod.<admin Service>.<namespace>.svc`); before, the bare
/// pod IP, which no certificate names.
pub const MIN_KIC_ADMIN_SNI: Version = Version {
    major: 3,
    minor: 5,
    patch: 0,
};

pub const ENV_CONTROLLER_ADMIN_TLS_SKIP_VERIFY: &str = "CONTROLLER_KONG_ADMIN_TLS_SKIP_VERIFY";
/// The Admin API's own certificate; unset, Kong serves a self-signed one.
pub const ENV_ADMIN_SSL_CERT: &str = "KONG_ADMIN_SSL_CERT";

/// A true boolean as KIC's flags parse it (Go's `strconv.ParseBool`).
pub fn parses_true(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

pub const MIN_KONG_STATUS_READY: Version = Version {
    major: 3,
    minor: 3,
    patch: 0,
};

/// The path a DB-less gateway's readinessProbe asks, when it is one Kong
/// answers before it is configured (`/status`, or any other than
/// `/status/ready`). Without a sidecar such a gateway takes traffic it can
/// only answer with 404 until the controller's first push.
pub fn premature_readiness_path(proxy: &k8s_openapi::api::core::v1::Container) -> Option<&str> {
    let db = proxy
        .env
        .iter()
        .flatten()
        .find(|e| e.name == ENV_DATABASE)
        .and_then(|e| e.value.as_deref());
    if database_mode(db) != "off" {
        return None;
    }
    proxy
        .readiness_probe
        .as_ref()?
        .http_get
        .as_ref()?
        .path
        .as_deref()
        .filter(|p| *p != STATUS_READY_PATH)
}

/// The chart's sidecar rendering of KONG_ADMIN_LISTEN, for tests and docs.
pub const SIDECAR_ADMIN_LISTEN: &str = "127.0.0.1:8444 http2 ssl, [::1]:8444 http2 ssl";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The KIC version an image reference's tag names, when it names one
/// (`kong/kubernetes-ingress-controller:3.4.1`, `...:v2.12`, `...:3.4-ubi`).
/// A digest-only reference or a tag like `latest` tells nothing.
pub fn image_version(image: &str) -> Option<Version> {
    let without_digest = image.split('@').next()?;
    // A registry port (`host:5000/repo`) has a `/` after its colon; a tag has none.
    let (_, tag) = without_digest.rsplit_once(':')?;
    if tag.contains('/') {
        return None;
    }
    let tag = tag.strip_prefix('v').unwrap_or(tag);
    let numeric = tag.split(['-', '+']).next()?;
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().unwrap_or(Some(0))?;
    let patch = parts.next().unwrap_or(Some(0))?;
    Some(Version {
        major,
        minor,
        patch,
    })
}

/// An image reference without its tag and digest, with Docker Hub's implied
/// registry and `library/` spelled out, so `kong`, `library/kong` and
/// `docker.io/library/kong:3.9` name one repository.
pub fn image_repository(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let repo = match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => without_digest,
    };
    let mut parts: Vec<&str> = repo.split('/').collect();
    let has_registry = parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost");
    if !has_registry {
        if parts.len() == 1 {
            parts.insert(0, "library");
        }
        parts.insert(0, "docker.io");
    }
    parts.join("/").to_ascii_lowercase()
}

/// The last path segment of an image's repository (`kubernetes-ingress-controller`).
pub fn image_name(image: &str) -> String {
    image_repository(image)
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Kong Gateway's images: `kong`, `kong-gateway`, `kong-enterprise-edition`,
/// and mirrors that keep the name.
pub fn is_gateway_image(image: &str) -> bool {
    image_name(image).contains("kong")
}

/// KIC's image, `kong/kubernetes-ingress-controller`, or a mirror keeping its name.
pub fn is_controller_image(image: &str) -> bool {
    image_name(image).contains("ingress-controller")
}

/// True when a URL (`https://localhost:8444`) points at the pod itself.
pub fn url_is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match split_host_port(authority) {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    is_loopback(host)
}

/// KONG_ADMIN_LISTEN with its TLS entries on all interfaces, as the chart
/// renders it for Gateway Discovery; flags (`http2 ssl`, ...) are kept. A
/// plain-HTTP entry stays where it is: KIC always dials https, and Kong OSS's
/// Admin API has no authentication, so a loopback HTTP listen opened to the
/// pod network would hand the gateway to every pod that can reach it.
pub fn admin_listen_all_interfaces(listen: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for entry in listen.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (addr, flags) = entry.split_once(' ').unwrap_or((entry, ""));
        let tls = flags.split_whitespace().any(|f| f == "ssl");
        let addr = match split_host_port(addr) {
            Some((host, port)) if tls && is_loopback(host) => {
                let any = if host.starts_with('[') {
                    "[::]"
                } else {
                    "0.0.0.0"
                };
                format!("{any}:{port}")
            }
            _ => addr.to_string(),
        };
        let rewritten = if flags.is_empty() {
            addr
        } else {
            format!("{addr} {}", flags.trim())
        };
        if !out.contains(&rewritten) {
            out.push(rewritten);
        }
    }
    out.join(", ")
}

/// True when no entry of KONG_ADMIN_LISTEN is reachable from another pod,
/// which is what makes a sidecar pod poison for a discovering controller.
pub fn admin_listen_is_local_only(listen: &str) -> bool {
    listen
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && *e != "off")
        .all(|entry| {
            let addr = entry.split(' ').next().unwrap_or(entry);
            split_host_port(addr).is_some_and(|(host, _)| is_loopback(host))
        })
}

fn split_host_port(addr: &str) -> Option<(&str, &str)> {
    let (host, port) = addr.rsplit_once(':')?;
    if host.starts_with('[') && !host.ends_with(']') {
        return None;
    }
    Some((host, port))
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "[::1]") || host.starts_with("127.")
}

/// Kong's database from KONG_DATABASE: unset means Kong's own default,
/// `postgres` (the chart always sets it, to `off` unless told otherwise).
pub fn database_mode(kong_database: Option<&str>) -> String {
    match kong_database.map(str::trim) {
        None | Some("") => "postgres".to_string(),
        Some(db) => db.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_versions() {
        let v = |major, minor, patch| {
            Some(Version {
                major,
                minor,
                patch,
            })
        };
        let cases = [
            ("kong/kubernetes-ingress-controller:3.4.1", v(3, 4, 1)),
            ("kong/kubernetes-ingress-controller:3.4", v(3, 4, 0)),
            ("kong/kubernetes-ingress-controller:v2.12.3", v(2, 12, 3)),
            ("kong/kubernetes-ingress-controller:2.10-ubi", v(2, 10, 0)),
            ("registry.local:5000/kic:3.1.0", v(3, 1, 0)),
            ("registry.local:5000/kic", None),
            ("kong/kubernetes-ingress-controller", None),
            ("kong/kubernetes-ingress-controller:latest", None),
            ("kong/kubernetes-ingress-controller@sha256:abcd", None),
            ("kic:3.4.1@sha256:abcd", v(3, 4, 1)),
        ];
        for (image, want) in cases {
            assert_eq!(image_version(image), want, "{image}");
        }
    }

    #[test]
    fn version_floor() {
        assert!(image_version("kic:2.10.4").unwrap() < MIN_KIC_VERSION);
        assert!(image_version("kic:2.11").unwrap() >= MIN_KIC_VERSION);
    }

    #[test]
    fn admin_listen_rewrites() {
        let cases = [
            (
                SIDECAR_ADMIN_LISTEN,
                "0.0.0.0:8444 http2 ssl, [::]:8444 http2 ssl",
            ),
            ("127.0.0.1:8444 ssl", "0.0.0.0:8444 ssl"),
            (
                "localhost:8001, 127.0.0.1:8444 http2 ssl",
                "localhost:8001, 0.0.0.0:8444 http2 ssl",
            ),
            ("127.0.0.1:8001", "127.0.0.1:8001"),
            (
                "127.0.0.1:8001 reuseport backlog=16384, 127.0.0.1:8444 http2 ssl reuseport backlog=16384",
                "127.0.0.1:8001 reuseport backlog=16384, 0.0.0.0:8444 http2 ssl reuseport backlog=16384",
            ),
            ("0.0.0.0:8444 http2 ssl", "0.0.0.0:8444 http2 ssl"),
            ("10.0.0.5:8444 ssl", "10.0.0.5:8444 ssl"),
        ];
        for (input, want) in cases {
            assert_eq!(admin_listen_all_interfaces(input), want, "{input}");
        }
    }

    #[test]
    fn admin_listen_reachability() {
        let cases = [
            (SIDECAR_ADMIN_LISTEN, true),
            ("127.0.0.1:8444", true),
            ("0.0.0.0:8444 http2 ssl, [::]:8444 http2 ssl", false),
            ("127.0.0.1:8001, 0.0.0.0:8444 ssl", false),
            ("[::]:8444 ssl", false),
        ];
        for (input, want) in cases {
            assert_eq!(admin_listen_is_local_only(input), want, "{input}");
        }
    }

    #[test]
    fn image_repositories() {
        let cases = [
            ("kong", "docker.io/library/kong"),
            ("kong:3.9", "docker.io/library/kong"),
            ("library/kong:3.9", "docker.io/library/kong"),
            ("docker.io/library/kong:3.9", "docker.io/library/kong"),
            (
                "kong/kubernetes-ingress-controller:3.4",
                "docker.io/kong/kubernetes-ingress-controller",
            ),
            (
                "Kong/kubernetes-ingress-controller@sha256:abcd",
                "docker.io/kong/kubernetes-ingress-controller",
            ),
            ("registry.local:5000/kic:3.1.0", "registry.local:5000/kic"),
            ("registry.local:5000/kic", "registry.local:5000/kic"),
            ("localhost/kic:1", "localhost/kic"),
            ("ghcr.io/evil/kic:3.4", "ghcr.io/evil/kic"),
        ];
        for (image, want) in cases {
            assert_eq!(image_repository(image), want, "{image}");
        }
    }

    #[test]
    fn kong_images() {
        let cases = [
            ("kong:3.9", true, false),
            ("kong/kong-gateway:3.9", true, false),
            (
                "registry.local/mirror/kong-enterprise-edition:3.4",
                true,
                false,
            ),
            ("kong/kubernetes-ingress-controller:3.4", false, true),
            ("busybox:1.36", false, false),
            ("nginx:1.27", false, false),
        ];
        for (image, gateway, controller) in cases {
            assert_eq!(is_gateway_image(image), gateway, "{image}");
            assert_eq!(is_controller_image(image), controller, "{image}");
        }
    }

    #[test]
    fn loopback_urls() {
        let cases = [
            ("https://localhost:8444", true),
            ("https://127.0.0.1:8444", true),
            ("https://[::1]:8444/", true),
            ("http://localhost", true),
            ("https://kong-admin.kong:8444", false),
            ("https://10.0.0.5:8444", false),
        ];
        for (url, want) in cases {
            assert_eq!(url_is_loopback(url), want, "{url}");
        }
    }

    #[test]
    fn database_modes() {
        assert_eq!(database_mode(None), "postgres");
        assert_eq!(database_mode(Some("")), "postgres");
        assert_eq!(database_mode(Some("off")), "off");
        assert_eq!(database_mode(Some("postgres")), "postgres");
    }
}
