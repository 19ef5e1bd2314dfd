//! Checks the CRD cannot make cheaply. A CEL rule over every port of every container exceeds the
//! API server's cost budget for an embedded PodTemplateSpec, so these run in the operator and are
//! reported as `Degraded=True, reason InvalidSpec` with the same kind of message. The reserved
//! lifecycle volume name (as a volume, or as a mount of any container) is the same kind of walk
//! over every container, so it is checked here too.

use ssekeeper_contract as contract;

use crate::api::SseService;

/// Why the spec cannot be rendered into a valid pod (the message says what to change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A container uses one of the sidecar's ports.
    #[error(
        "container {container:?} uses port {port}, which the injected sidecar needs ({} and {} are reserved); move the app to another port",
        contract::SSE_PORT,
        contract::ADMIN_PORT
    )]
    ReservedPort {
        /// The container.
        container: String,
        /// The port.
        port: i32,
    },
    /// A container names a port like one of the sidecar's.
    #[error(
        "container {container:?} names a port {name:?}; the port names {:?} and {:?} are reserved for the injected sidecar, rename it",
        contract::SSE_PORT_NAME,
        contract::ADMIN_PORT_NAME
    )]
    ReservedPortName {
        /// The container.
        container: String,
        /// The port name.
        name: String,
    },
    /// The template has a volume named like the lifecycle socket's.
    #[error(
        "the pod template has a volume named {:?}, which is reserved for the injected sidecar's lifecycle socket; rename it",
        contract::LIFECYCLE_VOLUME_NAME
    )]
    ReservedVolume,
    /// A container mounts a volume named like the lifecycle socket's.
    #[error(
        "container {container:?} mounts a volume named {:?}, which is reserved for the injected sidecar's lifecycle socket (only the sidecar may reach it); rename the mount",
        contract::LIFECYCLE_VOLUME_NAME
    )]
    ReservedMount {
        /// The container.
        container: String,
    },
}

/// Why the spec cannot be rendered into a valid pod.
pub fn validate(svc: &SseService) -> Result<(), SpecError> {
    lifecycle_volume_is_free(svc)?;
    let containers = svc
        .spec
        .template
        .spec
        .as_ref()
        .map(|p| p.containers.as_slice())
        .unwrap_or_default();
    let reserved_ports = [
        i32::from(contract::SSE_PORT),
        i32::from(contract::ADMIN_PORT),
    ];
    let reserved_names = [contract::SSE_PORT_NAME, contract::ADMIN_PORT_NAME];
    for c in containers {
        for p in c.ports.iter().flatten() {
            if reserved_ports.contains(&p.container_port) {
                return Err(SpecError::ReservedPort {
                    container: c.name.clone(),
                    port: p.container_port,
                });
            }
            if let Some(name) = p.name.as_deref().filter(|n| reserved_names.contains(n)) {
                return Err(SpecError::ReservedPortName {
                    container: c.name.clone(),
                    name: name.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The lifecycle socket's volume is the sidecar's alone: a template volume of that name would
/// clash, and a template mount of that name would hand the app (or any other container) the
/// socket that drains the pod.
fn lifecycle_volume_is_free(svc: &SseService) -> Result<(), SpecError> {
    let reserved = contract::LIFECYCLE_VOLUME_NAME;
    let Some(pod) = svc.spec.template.spec.as_ref() else {
        return Ok(());
    };
    if pod.volumes.iter().flatten().any(|v| v.name == reserved) {
        return Err(SpecError::ReservedVolume);
    }
    let all = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for c in all {
        if c.volume_mounts.iter().flatten().any(|m| m.name == reserved) {
            return Err(SpecError::ReservedMount {
                container: c.name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;
    use crate::api::SseService;

    fn svc(ports: &str) -> SseService {
        serde_yaml::from_str(&format!(
            "apiVersion: ssekeeper.dev/v1alpha1\nkind: SseService\nmetadata: {{name: a, namespace: b}}\nspec: {{appPort: 8080, template: {{spec: {{containers: [{{name: app, ports: {ports}}}]}}}}}}"
        ))
        .unwrap()
    }

    #[test]
    fn reserved_ports_and_names_are_refused_with_the_container_named() {
        assert!(validate(&svc("[{containerPort: 8080, name: http}]")).is_ok());
        let e = validate(&svc("[{containerPort: 8801}]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"app\"") && e.contains("8801"), "{e}");
        let e = validate(&svc("[{containerPort: 8080, name: sse}]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"sse\"") && e.contains("rename"), "{e}");
    }

    fn pod(spec: &str) -> SseService {
        serde_yaml::from_str(&format!(
            "apiVersion: ssekeeper.dev/v1alpha1\nkind: SseService\nmetadata: {{name: a, namespace: b}}\nspec: {{appPort: 8080, template: {{spec: {spec}}}}}"
        ))
        .unwrap()
    }

    #[test]
    fn the_lifecycle_volume_name_is_reserved_as_a_volume_and_as_a_mount() {
        let ok = "{containers: [{name: app, volumeMounts: [{name: data, mountPath: /d}]}], volumes: [{name: data, emptyDir: {}}]}";
        assert!(validate(&pod(ok)).is_ok());
        let e = validate(&pod(
            "{containers: [{name: app}], volumes: [{name: ssekeeper-run, emptyDir: {}}]}",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"ssekeeper-run\"") && e.contains("rename"),
            "{e}"
        );
        let e = validate(&pod(
            "{containers: [{name: app, volumeMounts: [{name: ssekeeper-run, mountPath: /run/ssekeeper}]}]}",
        ))
        .unwrap_err().to_string();
        assert!(e.contains("\"app\"") && e.contains("ssekeeper-run"), "{e}");
        let e = validate(&pod(
            "{containers: [{name: app}], initContainers: [{name: helper, restartPolicy: Always, volumeMounts: [{name: ssekeeper-run, mountPath: /x}]}]}",
        ))
        .unwrap_err().to_string();
        assert!(e.contains("\"helper\""), "{e}");
    }
}
