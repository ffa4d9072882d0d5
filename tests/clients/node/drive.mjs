// The Vercel AI SDK (`ai` + `@ai-sdk/openai`) driving agentchat's /v1 door as an application would.
//
//   node drive.mjs '{"baseURL": "http://127.0.0.1:PORT/v1", "apiKey": "...", "api": "responses", "stream": false,
//                    "ask": "...", "chainedAsk": "...", "resentAsk": "..."}'
//
// api: "responses" (openai(...), the provider's default) or "chat" (openai.chat(...)). It runs:
//   1. `ask` with a client tool, get_weather, through to a final answer (generateText/streamText
//      run the tool and send its result back: a multi-step run),
//   2. `chainedAsk` chained to it with previousResponseId (Responses only),
//   3. `resentAsk` after the first turn's whole history sent as messages (no previousResponseId).
// and prints one JSON object: each turn's final text, steps, tool calls, response id and what it sent;
// on the first failure, `error` (message, status, body) and the turns done so far.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const scenario = JSON.parse(process.argv[2]);
// What the SDK sent the service, in short: per request, its input items (type, or role) and chain.
const requests = [];
async function recordingFetch(url, init) {
  const body = typeof init?.body === "string" ? JSON.parse(init.body) : {};
  requests.push({
    items: (body.input ?? body.messages ?? []).map((item) => item.type ?? item.role),
    previousResponseId: body.previous_response_id ?? null,
  });
  return fetch(url, init);
}
const openai = createOpenAI({ baseURL: scenario.baseURL, apiKey: scenario.apiKey, fetch: recordingFetch });
const model = scenario.api === "chat" ? openai.chat("agentchat") : openai("agentchat");

const tools = {
  get_weather: tool({
    description: "The weather in a city.",
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => `sunny in ${city}`,
  }),
};

async function turn(options) {
  const settings = { model, tools, stopWhen: stepCountIs(5), maxRetries: 0, ...options };
  const start = requests.length;
  let result;
  let streamed = "";
  if (scenario.stream) {
    let failure;
    result = streamText({ ...settings, onError: ({ error }) => (failure ??= error) });
    for await (const delta of result.textStream) streamed += delta;
    if (failure) throw failure;
  } else {
    result = await generateText(settings);
  }
  const steps = await result.steps;
  const response = await result.response;
  return {
    text: await result.text,
    streamed: scenario.stream ? streamed : null,
    steps: steps.length,
    toolCalls: steps.flatMap((step) => step.toolCalls.map((call) => ({ name: call.toolName, input: call.input }))),
    toolResults: steps.flatMap((step) => step.toolResults.map((r) => r.output)),
    responseId: (await result.providerMetadata)?.openai?.responseId ?? response.id,
    messages: response.messages,
    requests: requests.slice(start),
  };
}

const out = { turns: {} };
try {
  const first = [{ role: "user", content: scenario.ask }];
  const one = await turn({ messages: first });
  out.turns.first = one;
  if (scenario.api !== "chat") {
    out.turns.chained = await turn({
      messages: [{ role: "user", content: scenario.chainedAsk }],
      providerOptions: { openai: { previousResponseId: one.responseId } },
    });
  }
  out.turns.resent = await turn({
    messages: [...first, ...one.messages, { role: "user", content: scenario.resentAsk }],
  });
} catch (error) {
  out.error = {
    message: String(error?.message ?? error),
    status: error?.statusCode ?? null,
    body: error?.responseBody ?? null,
  };
}
for (const t of Object.values(out.turns)) delete t.messages;
process.stdout.write(JSON.stringify(out) + "\n");
