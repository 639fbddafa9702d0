"""``GET /metrics`` in Prometheus' text format (version 0.0.4).

Written by hand rather than with ``prometheus_client``: a dozen gauges and counters are three
lines each, and a Raspberry Pi install keeps one dependency fewer.
"""

from __future__ import annotations

# name in Scheduler.snapshot() -> (metric name, type, help)
METRICS: dict[str, tuple[str, str, str]] = {
    "requests_total": ("edgesrm_requests_total", "counter", "Requests admitted to the engine."),
    "requests_rejected": ("edgesrm_requests_rejected_total", "counter", "Requests refused: queue full or shutting down."),
    "requests_cancelled": ("edgesrm_requests_cancelled_total", "counter", "Requests cancelled, running or queued: their client went away or the server shut down."),
    "requests_running": ("edgesrm_requests_running", "gauge", "Requests being decoded."),
    "requests_queued": ("edgesrm_requests_queued", "gauge", "Requests waiting for free sequences (queue depth)."),
    "sequences_busy": ("edgesrm_sequences_busy", "gauge", "Sequences reserved by running requests."),
    "sequence_ids_held": ("edgesrm_sequence_ids_held", "gauge", "llama.cpp sequence ids held by running requests (0 when idle: nothing leaked)."),
    "sequences_max": ("edgesrm_sequences_max", "gauge", "Sequences the engine decodes at once (--parallel)."),
    "kv_cells_reserved": ("edgesrm_kv_cells_reserved", "gauge", "KV cache cells reserved by running requests."),
    "kv_cells_max": ("edgesrm_kv_cells_max", "gauge", "KV cache cells in all (the context size)."),
    "prefix_cache_entries": ("edgesrm_prefix_cache_entries", "gauge", "Cached prompts kept for reuse."),
    "prefix_cache_tokens": ("edgesrm_prefix_cache_tokens", "gauge", "Tokens held by cached prompts."),
    "prefix_cache_hits": ("edgesrm_prefix_cache_hits_total", "counter", "Prompts that reused cached KV cells."),
    "prefix_cache_misses": ("edgesrm_prefix_cache_misses_total", "counter", "Prompts that found nothing to reuse."),
    "prefix_cache_reused_tokens": ("edgesrm_prompt_tokens_cached_total", "counter", "Prompt tokens not prefilled thanks to the cache."),
    "prompt_tokens": ("edgesrm_prompt_tokens_total", "counter", "Prompt tokens prefilled."),
    "generated_tokens": ("edgesrm_tokens_generated_total", "counter", "Tokens decoded for sequences (sampled and forced)."),
    "steps": ("edgesrm_decode_steps_total", "counter", "llama_decode calls (each one step of every live sequence)."),
    "decode_s": ("edgesrm_decode_seconds_total", "counter", "Seconds spent in shared decode steps."),
    "last_tokens_per_s": ("edgesrm_tokens_per_second", "gauge", "Generated tokens per second over the last 32 steps."),
}


def prometheus_text(snapshot: dict[str, float], http_counts: dict[int, int]) -> str:
    lines = []
    for key, (name, kind, help_text) in METRICS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {float(snapshot.get(key, 0)):g}"]
    lines += ["# HELP edgesrm_http_responses_total HTTP responses by status code.",
              "# TYPE edgesrm_http_responses_total counter"]
    lines += [f'edgesrm_http_responses_total{{code="{code}"}} {n}' for code, n in sorted(http_counts.items())]
    return "\n".join(lines) + "\n"
