// tokenwire's jobs and events as TypeScript declarations, generated from
// schemas/job.schema.json and schemas/event.schema.json by json-schema-to-typescript.
// Do not edit: run `npm --prefix tools/contract run types` after `tokenwire schema`.
// The five event types are named <Type>Event (their schema titles are Start, Token, ...). Event
// interfaces allow fields a later version adds. The job's api rules (`input` for native and
// completions, `messages` for chat) and its ranges are in the schema, not in these types.

/**
 * A generation job: the JSON held in the `job` field of an entry on the job stream (channel `jobs` of asyncapi.yaml). Api `native` (the default), `completions` and `sglang` take `input` and no `messages`; `chat`, `responses` and `gemini` take `messages` and no `input` (null counts as absent). The worker alone checks what depends on its settings: the payload's size (`max_payload_bytes`), the prompt's length (`max_input_chars`), `params.max_tokens` against `max_tokens_cap`, and whether `provider` and `escalate.provider` name a configured provider that serves the job's api, and whether the provider of a native job whose `escalate.signal` is `margin` sends top-k alternatives. It also rejects two things JSON Schema cannot express: an integer written with a fraction or an exponent (`5.0`, `5e0`; write `5`), and text that is not I-JSON (RFC 7493: UTF-8, no lone surrogates).
 */
export type TokenwireJob = {
  api?: "chat" | "completions" | "gemini" | "native" | "responses" | "sglang";
  budget?: number | null;
  candidates?: Candidates | null;
  escalate?: Escalate | null;
  id?: string | null;
  input?: string | null;
  logprobs?: "preferred" | "required";
  low_prob?: number;
  messages?: [ChatMessage, ...ChatMessage[]] | null;
  metadata?: {
    [k: string]: string | undefined;
  };
  model: string;
  params?: Params;
  provider?: string | null;
  review?: Review | null;
  traceparent?: string | null;
};
/**
 * Route by confidence: run the job's (cheap) model first and, when its ``signal`` after
 * ``after_tokens`` answer tokens (or at the end, when not given) is below ``below``, stop it
 * and run ``model`` (on ``provider``, default the job's) as a new attempt on the same stream.
 *
 * ``signal`` (each a value in [0, 1], also in ``done.summary``): ``confidence`` (default) the
 * running geometric-mean token probability, which long answers dilute; ``quantile`` the ``q``-th
 * quantile (nearest rank; ``q`` default 0.1) of the token probabilities so far; ``window_min``
 * ``exp`` of the lowest mean logprob over any ``window`` (default 8) consecutive scored tokens;
 * ``margin`` the mean top-1 minus top-2 probability, which needs ``params.top_logprobs`` of 2 or
 * more and a provider that sends alternatives. ``q`` goes only with ``quantile``, ``window`` only
 * with ``window_min``. With ``candidates`` each candidate is judged after ``after_tokens`` (or at
 * its end, when it ends sooner) and the job escalates at once when every one is under ``below``
 * (:mod:`worker.candidates`); ``agreement`` (judged when every candidate has answered) takes no
 * ``after_tokens``.
 */
export type Escalate = Escalate1;

/**
 * Several candidate answers on one stream (:mod:`worker.candidates`): ``n`` generations of the
 * job, each token event tagged with its ``candidate``, each closed by a ``candidate_done``, and a
 * ``done`` with the best by ``rank_by`` (higher wins; ``mean_logprob``, the default, is
 * length-normalised; ``quantile``, ``window_min`` and ``margin`` are the routing signals of
 * ``done.summary``) and ``agreement``: the share of the answered candidates whose normalised
 * answer equals the winner's (whitespace and case folded; ``agree_on: first_line`` compares only
 * the first non-empty line, for classification).
 */
export interface Candidates {
  agree_on?: "first_line" | "text";
  n: number;
  rank_by?: "confidence" | "cum_logprob" | "margin" | "mean_logprob" | "quantile" | "window_min";
}
export interface Escalate1 {
  after_tokens?: number | null;
  below: number;
  model: string;
  provider?: string | null;
  q?: number | null;
  signal?: "agreement" | "confidence" | "margin" | "quantile" | "window_min";
  window?: number | null;
}
/**
 * One chat message; ``content`` is plain text.
 */
export interface ChatMessage {
  content: string;
  name?: string | null;
  role: "assistant" | "developer" | "system" | "tool" | "user";
}
/**
 * Sampling parameters, mapped to each protocol's own names by the adapters.
 */
export interface Params {
  frequency_penalty?: number | null;
  max_tokens?: number | null;
  presence_penalty?: number | null;
  repetition_penalty?: number | null;
  seed?: number | null;
  stop?: string[] | null;
  temperature?: number | null;
  top_k?: number | null;
  top_logprobs?: number | null;
  top_p?: number | null;
}
/**
 * Segment scores and a publish/review verdict (:mod:`worker.segments`): the answer is cut into
 * ``unit`` segments, each published as a ``segment`` event with the mean logprob of its tokens and
 * a band: ``high`` above ``publish_above``, ``low`` below ``review_below``, ``medium`` between
 * (``unscored`` when no token in it has a logprob). ``done.verdict`` is ``review`` when any
 * segment is ``low``, the job's confidence is under ``min_confidence``, or no token has a logprob;
 * such jobs are also put on the review stream ``{P}:review``.
 */
export interface Review {
  min_confidence?: number | null;
  publish_above?: number;
  review_below?: number;
  unit?: "line" | "paragraph" | "sentence";
}

/**
 * One event: the JSON held in the `event` field of an entry on a job's event stream (channel `events` of asyncapi.yaml). Exactly one terminal event (done, error, cancelled) ends a job.
 */
export type TokenwireEvent =
  StartEvent | TokenEvent | SegmentEvent | CandidateDoneEvent | DoneEvent | ErrorEvent | CancelledEvent;

/**
 * An attempt begins. ``reason`` says why when it is not the first one.
 */
export interface StartEvent {
  api: string;
  attempt: number;
  job_id: string;
  metadata?: {
    [k: string]: string | undefined;
  };
  model: string;
  provider: string;
  reason?: string | null;
  traceparent?: string;
  type: "start";
  [k: string]: unknown | undefined;
}
/**
 * One generated token with its log-probability and the running confidence after it.
 *
 * ``logprob`` is the provider's value (null when it gave none or a non-finite one);
 * ``confidence`` is ``exp(mean(sanitised logprob))`` over the scored tokens so far, null until the
 * first scored token. ``low`` marks a scored token whose probability is under the job's ``low_prob``.
 * ``char_start``/``char_end`` are code-point offsets of the token in ``done.text``. ``topk`` holds
 * the top-k metrics when the provider sent alternatives. ``channel`` is ``content`` for the answer
 * and ``reasoning`` for reasoning tokens, which have their own running confidence and never count
 * in the answer's. ``special`` is true for a control token, which is never scored nor part of
 * ``done.text``: the provider flagged it special, or said nothing and the token has neither text
 * nor bytes (a stripped stop token). A token the provider marked ``special: false`` is scored even
 * when its ``text`` is empty (part of a character a later token completes).
 */
export interface TokenEvent {
  attempt: number;
  candidate?: number;
  channel?: string;
  char_end?: number;
  char_start?: number;
  confidence?: number | null;
  ewma_confidence?: number | null;
  index: number;
  job_id: string;
  logprob: number | null;
  low?: boolean;
  min_prob?: number | null;
  special?: boolean;
  text: string;
  token_id?: number | null;
  top_logprobs?: TopLogprob[] | null;
  topk?: TopkMetrics | null;
  type: "token";
  [k: string]: unknown | undefined;
}
export interface TopLogprob {
  logprob: number | null;
  token: string;
  [k: string]: unknown | undefined;
}
/**
 * Per-token metrics from the provider's top alternatives (confidence.md §3.1), with the running
 * aggregates after this token. Entropies are in nats; ``entropy_ub`` needs the vocabulary size.
 */
export interface TopkMetrics {
  chosen_rank: number;
  entropy_lb: number;
  entropy_lump: number;
  entropy_ub?: number | null;
  margin: number | null;
  max_entropy_lb?: number | null;
  mean_entropy_lb?: number | null;
  n_not_top1?: number;
  tail_mass: number;
  [k: string]: unknown | undefined;
}
/**
 * One segment of the answer (a sentence, line or paragraph: the job's ``review.unit``),
 * published once its end is known: right after the token event that shows it (the first token
 * holding a character of the next segment), the last one before ``done``. Only jobs with
 * ``review`` publish segments (:mod:`worker.segments` has the boundary rules).
 *
 * Segments are runs of whole answer tokens (channel ``content``) and tile the answer:
 * ``token_start``/``token_end`` are token event indexes (end exclusive); ``char_*`` (code points)
 * and ``byte_*`` (UTF-8) locate ``text`` in ``done.text``. ``mean_logprob`` and ``min_prob``
 * are over the segment's scored tokens (``n_scored``; null when none). ``band``: ``high`` when
 * ``mean_logprob`` is above ``review.publish_above``, ``low`` below ``review.review_below``,
 * ``medium`` otherwise, ``unscored`` when no token in it has a logprob.
 */
export interface SegmentEvent {
  attempt: number;
  band: "high" | "low" | "medium" | "unscored";
  byte_end: number;
  byte_start: number;
  candidate?: number;
  char_end: number;
  char_start: number;
  index: number;
  job_id: string;
  mean_logprob: number | null;
  min_prob: number | null;
  n_scored: number;
  text: string;
  token_end: number;
  token_start: number;
  type: "segment";
  [k: string]: unknown | undefined;
}
/**
 * One candidate of a job with ``candidates`` ended: its own finish reason, text, confidence,
 * summary (and verdict with ``review``), or ``error`` when it failed (the others go on). Its
 * offsets and ``index`` count within ``candidate``. Not terminal: the job's ``done`` follows.
 */
export interface CandidateDoneEvent {
  attempt: number;
  candidate: number;
  confidence?: number | null;
  error?: CandidateError | null;
  finish_reason?: string | null;
  job_id: string;
  summary?: Summary | null;
  text?: string;
  text_truncated?: boolean;
  type: "candidate_done";
  verdict?: Verdict;
  [k: string]: unknown | undefined;
}
/**
 * Why a candidate failed: the ``code`` and ``message`` an ``error`` event would carry.
 */
export interface CandidateError {
  code: string;
  message: string;
  [k: string]: unknown | undefined;
}
/**
 * Final confidence metrics of the attempt that produced ``done``. ``low_spans_truncated``:
 * ``low_spans`` holds only the first spans, as the ``done`` would have exceeded the worker's
 * ``max_event_bytes`` (every token event carries its own ``low`` flag).
 *
 * Routing signals without length bias (``escalate.signal``), over the scored tokens, null when
 * none is scored. ``p10_prob``: the 10th-percentile token probability, nearest rank (the
 * ``ceil(0.1·n)``-th smallest ``exp(logprob)`` of the ``n`` scored tokens, exact). ``quantile``:
 * the ``quantile_q``-th quantile the same way; ``quantile_q`` is the job's ``escalate.q`` when its
 * signal is ``quantile``, else 0.1. ``window_min``: the lowest mean logprob (nats) over any
 * ``window`` consecutive scored tokens (the mean of all of them when fewer were scored; the
 * signal compares ``exp(window_min)``); ``window`` is the job's ``escalate.window`` when its
 * signal is ``window_min``, else 8. The ``margin`` signal is ``mean_margin``. The stronger model's
 * attempt of an escalated job routes by nothing: its summary has the defaults (0.1 and 8), and
 * ``escalation.summary`` the cheap attempt's with the job's ``q`` and ``window``.
 */
export interface Summary {
  bits_per_byte: number | null;
  cum_logprob: number;
  ewma_confidence: number | null;
  logprobs_available: boolean;
  low_spans: LowSpan[];
  low_spans_truncated?: boolean;
  max_entropy_index?: number | null;
  max_entropy_lb?: number | null;
  mean_entropy_lb?: number | null;
  mean_logprob: number | null;
  mean_margin?: number | null;
  mean_prob: number | null;
  min_index: number | null;
  min_prob: number | null;
  n_clamped: number;
  n_excluded: number;
  n_missing: number;
  n_not_top1?: number;
  n_scored: number;
  n_tokens: number;
  n_topk?: number;
  p10_prob?: number | null;
  perplexity: number | null;
  quantile?: number | null;
  quantile_q?: number;
  window?: number;
  window_min?: number | null;
  [k: string]: unknown | undefined;
}
/**
 * A maximal run of scored tokens with probability under ``low_prob``; ends are exclusive.
 */
export interface LowSpan {
  byte_end: number;
  byte_start: number;
  char_end: number;
  char_start: number;
  end_token: number;
  mean_logprob: number;
  min_index: number;
  min_prob: number;
  n_tokens: number;
  start_token: number;
  text: string;
  [k: string]: unknown | undefined;
}
/**
 * What a job with ``review`` should become: ``publish``, or ``review`` (by a person) when any
 * segment is ``low``, the confidence is under ``review.min_confidence``, or no answer token has a
 * logprob; ``reasons`` says which, in words. Counts are of the attempt's segments by band.
 */
export interface Verdict {
  decision: "publish" | "review";
  n_high?: number;
  n_low: number;
  n_medium: number;
  n_unscored?: number;
  reasons: string[];
  [k: string]: unknown | undefined;
}
/**
 * The job finished. No ``done`` exceeds the worker's ``max_event_bytes``: when the answer
 * would make it larger, ``text`` (then ``reasoning_text``) holds only its beginning and
 * ``text_truncated`` is true; the whole answer is then the concatenation of the ``text`` of the
 * attempt's token events (channel ``content``; ``reasoning`` for the reasoning).
 */
export interface DoneEvent {
  agreement?: number;
  attempt: number;
  candidates?: CandidateResult[];
  confidence: number | null;
  escalation?: Escalation | null;
  finish_reason: string;
  job_id: string;
  logprobs_available?: boolean;
  logprobs_reason?: string | null;
  metadata?: {
    [k: string]: string | undefined;
  };
  reasoning_confidence?: number | null;
  reasoning_text?: string | null;
  summary: Summary;
  text: string;
  text_truncated?: boolean;
  type: "done";
  usage: Usage;
  verdict?: Verdict;
  [k: string]: unknown | undefined;
}
/**
 * One candidate in ``done.candidates``: ``rank`` 1 is the winner (null for a failed one),
 * ``score`` its value of ``candidates.rank_by`` (null when unknown: it ranks last).
 */
export interface CandidateResult {
  confidence?: number | null;
  error?: CandidateError | null;
  finish_reason: string | null;
  index: number;
  rank: number | null;
  score: number | null;
  summary?: Summary | null;
  text: string;
  text_truncated?: boolean;
  verdict?: Verdict;
  [k: string]: unknown | undefined;
}
/**
 * Why a job moved to a stronger model, with the cheap attempt's own outcome.
 */
export interface Escalation {
  after_tokens: number | null;
  below: number;
  confidence: number | null;
  from_attempt: number;
  from_model: string;
  from_provider: string;
  summary: Summary;
  tokens: number;
  [k: string]: unknown | undefined;
}
/**
 * ``input_tokens`` / ``output_tokens``: the answering attempt's (output: the tokens it streamed).
 * When the job's provider has a price table, or the job a ``budget``, also ``cost`` (every attempt
 * of the delivery that finished the job: retries, an escalation's cheap attempt and its strong one),
 * ``escalation_cost`` (the stronger model's share; null without an escalation) and ``attempts``
 * (each attempt's own usage); ``cost`` is null when some attempt's model has no price.
 */
export interface Usage {
  attempts?: AttemptUsage[];
  cost?: number | null;
  escalation_cost?: number | null;
  input_tokens?: number | null;
  output_tokens?: number;
  [k: string]: unknown | undefined;
}
/**
 * One attempt's usage: the provider's counts, or (``counted``) the tokens the worker received
 * and no prompt count; ``cost`` from the provider's price table (None: no price for the model);
 * ``escalation``: it ran on the job's stronger model.
 */
export interface AttemptUsage {
  attempt: number;
  cost: number | null;
  counted: boolean;
  escalation?: boolean;
  input_tokens: number | null;
  model: string;
  output_tokens: number;
  provider: string;
  [k: string]: unknown | undefined;
}
/**
 * The job failed. ``code`` is a stable snake_case word; ``message`` says what went wrong.
 */
export interface ErrorEvent {
  attempt: number;
  code: string;
  job_id: string;
  message: string;
  metadata?: {
    [k: string]: string | undefined;
  };
  type: "error";
  [k: string]: unknown | undefined;
}
export interface CancelledEvent {
  attempt: number;
  job_id: string;
  metadata?: {
    [k: string]: string | undefined;
  };
  reason: string;
  type: "cancelled";
  [k: string]: unknown | undefined;
}
