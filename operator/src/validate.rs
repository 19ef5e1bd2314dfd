//! Checks the CRD cannot make cheaply. A CEL rule over every port of every container exceeds the
//! API server's cost budget for an embedded PodTemplateSpec, so these run in the operator and are
//! reported as `Degraded=True, reason InvalidSpec` with the same kind of message. The reserved
//! lifecycle volume name (as a volume, or as a mount of any container) is the same kind of walk
//! over every container, so it is checked here too.

use ssekeeper_contract as contract;

use crate::api::SseService;

/// Why the spec cannot be rendered into a valid pod.
pub fn validate(svc: &SseService) -> Result<(), String> {
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
                return Err(format!(
                    "container {:?} uses port {}, which the injected sidecar needs ({} and {} are reserved); move the app to another port",
                    c.name, p.container_port, reserved_ports[0], reserved_ports[1]
                ));
            }
            if let Some(name) = p.name.as_deref().filter(|n| reserved_names.contains(n)) {
                return Err(format!(
                    "container {:?} names a port {name:?}; the port names {:?} and {:?} are reserved for the injected sidecar, rename it",
                    c.name, reserved_names[0], reserved_names[1]
                ));
            }
        }
    }
    Ok(())
}

/// The lifecycle socket's volume is the sidecar's alone: a template volume of that name would
/// clash, and a template mount of that name would hand the app (or any other container) the
/// socket that drains the pod.
fn lifecycle_volume_is_free(svc: &SseService) -> Result<(), String> {
    let reserved = contract::LIFECYCLE_VOLUME_NAME;
    let Some(pod) = svc.spec.template.spec.as_ref() else {
        return Ok(());
    };
    if pod.volumes.iter().flatten().any(|v| v.name == reserved) {
        return Err(format!(
            "the pod template has a volume named {reserved:?}, which is reserved for the injected sidecar's lifecycle socket; rename it"
        ));
    }
    let all = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for c in all {
        if c.volume_mounts.iter().flatten().any(|m| m.name == reserved) {
            return Err(format!(
                "container {:?} mounts a volume named {reserved:?}, which is reserved for the injected sidecar's lifecycle socket (only the sidecar may reach it); rename the mount",
                c.name
            ));
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
        let e = validate(&svc("[{containerPort: 8801}]")).unwrap_err();
        assert!(e.contains("\"app\"") && e.contains("8801"), "{e}");
        let e = validate(&svc("[{containerPort: 8080, name: sse}]")).unwrap_err();
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
        .unwrap_err();
        assert!(
            e.contains("\"ssekeeper-run\"") && e.contains("rename"),
            "{e}"
        );
        let e = validate(&pod(
            "{containers: [{name: app, volumeMounts: [{name: ssekeeper-run, mountPath: /run/ssekeeper}]}]}",
        ))
        .unwrap_err();
        assert!(e.contains("\"app\"") && e.contains("ssekeeper-run"), "{e}");
        let e = validate(&pod(
            "{containers: [{name: app}], initContainers: [{name: helper, restartPolicy: Always, volumeMounts: [{name: ssekeeper-run, mountPath: /x}]}]}",
        ))
        .unwrap_err();
        assert!(e.contains("\"helper\""), "{e}");
    }
}
