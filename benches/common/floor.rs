//! The `e2e_floor` report: the 32-stream end-to-end target alone (the layer with replay off
//! against tower-http's static `AddAuthorization`, over loopback HTTP), with enough rounds to say
//! how precisely the ratio is known. `e2e_ratio` compares six sides in 31 rounds; its median
//! ratio moves by about 1.5% between runs on a 2-vCPU machine, which is more than the difference
//! being measured. Here the two sides alternate (which goes first swaps every round) for many
//! short rounds, and the report gives the median per-round ratio with a distribution-free 95%
//! confidence interval (order statistics of the binomial), plus how many rounds each side won.
// Not every bench binary uses every helper.
#![allow(dead_code)]

use tower::Layer;

use super::{e2e_load_with, loopback_fhir_server, request_to};

/// Rounds of the report (each side sends `TASKS * PER_TASK` requests per round).
const ROUNDS: usize = 201;
const TASKS: usize = 32;
const PER_TASK: usize = 60;

/// The ranks (0-based, into the sorted sample) bounding a 95% confidence interval for the median
/// of `n` values: `[X(r), X(n + 1 - r)]` (1-based order statistics) for the largest `r` with
/// P(Binomial(n, 1/2) <= r - 1) <= 2.5%; the whole sample when `n` is too small for that. For
/// `n = 201`: `r = 87`, ranks 86 and 114.
pub(crate) fn median_interval(n: usize) -> (usize, usize) {
    // P(X <= j) for X ~ Binomial(n, 1/2), summed in logs to stay finite for large `n`.
    let ln_choose =
        |j: usize| -> f64 { (1..=j).map(|i| ((n + 1 - i) as f64 / i as f64).ln()).sum() };
    let mut below = 0.0;
    let mut k = 0;
    while k < n / 2 {
        let next = below + (ln_choose(k) - n as f64 * std::f64::consts::LN_2).exp();
        if next > 0.025 {
            break;
        }
        below = next;
        k += 1;
    }
    // `k` is that `r`.
    (k.saturating_sub(1), n - k.max(1))
}

/// Runs the report and prints it; `allocator` names the binary's global allocator.
pub(crate) fn e2e_floor(allocator: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (base, auth) = runtime.block_on(loopback_fhir_server());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<super::Body>();
    let url: http::Uri = format!("{base}/Patient/123").parse().unwrap();
    let floor =
        tower_http::auth::AddAuthorizationLayer::bearer("fake-token-1").layer(client.clone());
    let ours = auth.layer().replay_on_401(false).layer(client.clone());
    // `E2E_FLOOR_AA=1`: the bench against itself (a second `AddAuthorization` in the layer's
    // place), to see how far from 1.00 the setup alone puts the ratio. `=static`: a static
    // header value in the layer's place (no reference count at all), to see what the floor's
    // shared count costs.
    let twin_kind = std::env::var("E2E_FLOOR_AA").ok();
    let same = twin_kind.as_deref() == Some("1");
    let fixed = twin_kind.as_deref() == Some("static");
    let twin =
        tower_http::auth::AddAuthorizationLayer::bearer("fake-token-1").layer(client.clone());
    let static_header = tower_http::set_header::SetRequestHeaderLayer::overriding(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Bearer fake-token-1"),
    )
    .layer(client.clone());
    // For profiling one side alone (`perf record`, `valgrind`): `E2E_FLOOR_ONLY=floor` or
    // `=ours`, and fewer rounds with `E2E_FLOOR_ROUNDS`.
    let rounds = std::env::var("E2E_FLOOR_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse::<usize>().ok())
        .map_or(ROUNDS, |rounds| rounds.clamp(1, ROUNDS));
    let only = std::env::var("E2E_FLOOR_ONLY").ok();
    let runs = |side: &str| only.as_deref().is_none_or(|only| only == side);
    let mut ratios = Vec::with_capacity(rounds);
    runtime.block_on(async {
        // Warm the pool to its working size first.
        e2e_load_with(&client, &url, TASKS, 20, request_to).await;
        for round in 0..rounds {
            let (mut floor_rps, mut ours_rps) = (0.0, 0.0);
            for side in [round % 2, 1 - round % 2] {
                if side == 0 && runs("floor") {
                    floor_rps = e2e_load_with(&floor, &url, TASKS, PER_TASK, request_to).await;
                } else if side == 1 && runs("ours") && fixed {
                    ours_rps =
                        e2e_load_with(&static_header, &url, TASKS, PER_TASK, request_to).await;
                } else if side == 1 && runs("ours") && same {
                    ours_rps = e2e_load_with(&twin, &url, TASKS, PER_TASK, request_to).await;
                } else if side == 1 && runs("ours") {
                    ours_rps = e2e_load_with(&ours, &url, TASKS, PER_TASK, request_to).await;
                }
            }
            ratios.push(ours_rps / floor_rps);
        }
    });
    ratios.sort_by(f64::total_cmp);
    let (low, high) = median_interval(ratios.len());
    let won = ratios.iter().filter(|&&ratio| ratio > 1.0).count();
    println!(
        "\ne2e floor ({allocator}), {TASKS} concurrent streams, koppeltaal_auth replay off / \
         add_authorization ({rounds} alternating rounds of {} requests per side): median ratio \
         {:.4}, 95% interval [{:.4}, {:.4}], rounds won {won}/{rounds} (target >= 1.00)",
        TASKS * PER_TASK,
        ratios[ratios.len() / 2],
        ratios[low],
        ratios[high],
    );
}
