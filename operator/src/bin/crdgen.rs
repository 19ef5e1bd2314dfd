//! Writes the SseService CRD YAML to stdout (`make crds` stores it in crds/ and the chart).

fn main() {
    print!("{}", ssekeeper_operator::crd::crd_yaml());
}
