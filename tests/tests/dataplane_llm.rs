//! LLM answers through a pod going away: streaming chat completions (the SSE answer of a `POST`)
//! from an OpenAI-compatible app, with the official `openai` Python SDK as the client, and the
//! pod terminated mid-answer. A plain pod finishes its in-flight answers within its grace period;
//! through the sidecar every answer must arrive whole too (a request stream is never closed by the
//! drain), and the pod must still go as soon as the last answer is done, not at the deadline.

use std::time::{Duration, Instant};

use serde::Deserialize;
use ssekeeper_tests::demo::completions::expected_content;
use ssekeeper_tests::harness::{
    Balance, Binaries, Cluster, ClusterConfig, Mode, bounded, kubelet::TerminationReport,
};
use ssekeeper_tests::scenario::serial;
use ssekeeper_tests::sdk;

fn binaries() -> Binaries {
    Binaries::locate(env!("CARGO_BIN_EXE_demo-app")).expect("test programs present")
}

/// Concurrent answers on the pod that is terminated.
const ANSWERS: usize = 10;
/// Tokens per answer, and the pause before each: a 4 s answer.
const TOKENS: u32 = 100;
const INTERVAL_MS: u32 = 40;
/// How far into the answers the termination starts.
const TERMINATE_AFTER: Duration = Duration::from_millis(1000);

/// One answer as the SDK delivered it.
#[derive(Debug, Deserialize)]
struct Answer {
    i: usize,
    content: String,
    chunks: usize,
    finish: Option<String>,
    error: Option<String>,
    secs: f64,
}

impl Answer {
    fn whole(&self) -> bool {
        self.error.is_none()
            && self.finish.as_deref() == Some("stop")
            && self.content == expected_content(TOKENS)
    }
}

#[derive(Debug, Deserialize)]
struct Answers {
    answers: Vec<Answer>,
}

/// Start the answers through the balancer, terminate the pod mid-answer, collect what the SDK
/// delivered and how the termination went.
async fn answers_through_a_termination(mode: Mode) -> (Vec<Answer>, TerminationReport) {
    let cfg = ClusterConfig::new("llm", mode, Balance::RoundRobin, 1);
    let mut cluster = Cluster::start(binaries(), cfg)
        .await
        .expect("cluster starts");
    let mut client = sdk::ClientRun::spawn(
        &sdk::python(),
        &[
            sdk::script("openai_completions.py").display().to_string(),
            format!("http://{}/v1", cluster.frontend()),
            ANSWERS.to_string(),
            TOKENS.to_string(),
            INTERVAL_MS.to_string(),
            "60".into(),
        ],
    );
    client
        .expect_line("streaming", Duration::from_secs(60))
        .await;
    tokio::time::sleep(TERMINATE_AFTER).await;
    let pod = cluster.pod_names().remove(0);
    let report = cluster.terminate(&pod).await.expect("the pod was running");
    let answers: Answers = client.report(Duration::from_secs(60)).await;
    (answers.answers, report)
}

fn summary(label: &str, answers: &[Answer], report: &TerminationReport) -> usize {
    let whole = answers.iter().filter(|a| a.whole()).count();
    println!(
        "{label}: {whole}/{} answers whole; pod terminated {:.1}s into the answers: {report}",
        answers.len(),
        TERMINATE_AFTER.as_secs_f64()
    );
    for a in answers.iter().filter(|a| !a.whole()) {
        println!(
            "  answer {}: {} chunks, {} chars, finish {:?}, error {:?}, {:.1}s",
            a.i,
            a.chunks,
            a.content.len(),
            a.finish,
            a.error,
            a.secs
        );
    }
    whole
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_answers_finish_whole_through_a_terminating_pod() {
    let _turn = serial().await;
    bounded(Duration::from_secs(240), "LLM answers", async {
        let t0 = Instant::now();
        let (plain, plain_report) = answers_through_a_termination(Mode::Direct).await;
        let plain_whole = summary("plain pod (baseline)", &plain, &plain_report);
        let (through, report) = answers_through_a_termination(Mode::Sidecar).await;
        let whole = summary("through the sidecar", &through, &report);
        println!(
            "openai SDK, {ANSWERS} streaming completions of {TOKENS} tokens: plain pod \
             {plain_whole}/{ANSWERS} whole, sidecar {whole}/{ANSWERS} whole ({:.0}s)",
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(plain_whole, ANSWERS, "the baseline itself holds");
        assert_eq!(
            whole, ANSWERS,
            "every answer arrives whole through the sidecar"
        );
        assert!(report.clean(), "every container exits by itself: {report}");
        let answer = Duration::from_millis(u64::from(TOKENS * INTERVAL_MS));
        assert!(
            report.took < answer + Duration::from_secs(8),
            "the pod goes once its answers are done, not at the grace deadline: {report}"
        );
        let app = &report.app;
        assert!(
            app.prestop_done >= answer.saturating_sub(TERMINATE_AFTER),
            "the app got its SIGTERM only after the answers were done: {report}"
        );
    })
    .await;
}
