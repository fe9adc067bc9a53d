// One case of the official Node SDKs (openai, @anthropic-ai/sdk) against a Gate:
//
//   node sdk_cases.mjs CASE GATE_URL MODEL
//
// It makes the SDK calls a user's program makes and prints what it observed as one JSON
// line on stdout; tests/e2e/test_node_sdks.py checks it. An SDK error exits 1 with the
// error on stderr (its class, status and message), so the test shows why.
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";

const [caseName, gateUrl, model] = process.argv.slice(2);
const openai = new OpenAI({ baseURL: `${gateUrl}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60_000 });
const anthropic = new Anthropic({ baseURL: gateUrl, apiKey: "unused", maxRetries: 0, timeout: 60_000 });

const HI = [{ role: "user", content: "hi" }];
// An enum, so that the grammar-constrained arguments of random weights end quickly.
const WEATHER = {
  name: "get_weather",
  description: "Current weather for a city",
  input_schema: {
    type: "object",
    properties: { city: { type: "string", enum: ["Paris", "Oslo", "Lima"] } },
    required: ["city"],
  },
};
const FORCED = { type: "tool", name: "get_weather" };

const cases = {
  async chat_stream() {
    const stream = await openai.chat.completions.create({
      model,
      messages: HI,
      max_tokens: 8,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish = null;
    let usage = null;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks += 1;
      const choice = chunk.choices[0];
      if (choice) {
        text += choice.delta?.content ?? "";
        finish = choice.finish_reason ?? finish;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    return { text, finish, usage, chunks };
  },

  async responses() {
    const response = await openai.responses.create({ model, input: "hi", max_output_tokens: 16 });
    return {
      object: response.object,
      status: response.status,
      output_text: response.output_text,
      output_types: response.output.map((item) => item.type),
      usage: response.usage,
    };
  },

  async responses_stream() {
    const stream = await openai.responses.create({
      model,
      input: [{ role: "user", content: "hi" }],
      instructions: "Answer briefly.",
      max_output_tokens: 16,
      stream: true,
    });
    const events = [];
    let text = "";
    let completed = null;
    for await (const event of stream) {
      events.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
      // The last event carries the whole response: completed, or incomplete when the
      // reply reached max_output_tokens (the tiny model often runs that long).
      if (event.type === "response.completed" || event.type === "response.incomplete") {
        completed = event.response;
      }
    }
    return {
      events,
      text,
      status: completed?.status ?? null,
      output_text: completed?.output_text ?? completed?.output?.[0]?.content?.[0]?.text ?? null,
      usage: completed?.usage ?? null,
    };
  },

  async embeddings() {
    const result = await openai.embeddings.create({ model, input: ["a", "b c"] });
    return { count: result.data.length, dims: result.data.map((d) => d.embedding.length), usage: result.usage };
  },

  async messages_stream_tools() {
    const stream = anthropic.messages.stream({
      model,
      max_tokens: 64,
      messages: HI,
      tools: [WEATHER],
      tool_choice: FORCED,
    });
    const events = [];
    stream.on("streamEvent", (event) => events.push(event.type));
    const message = await stream.finalMessage();
    return {
      events,
      stop_reason: message.stop_reason,
      content: message.content.map((b) => ({ type: b.type, name: b.name, input: b.input })),
      usage: message.usage,
    };
  },

  async messages_forced_tool() {
    const message = await anthropic.messages.create({
      model,
      max_tokens: 64,
      messages: HI,
      tools: [WEATHER],
      tool_choice: FORCED,
    });
    return {
      type: message.type,
      stop_reason: message.stop_reason,
      content: message.content.map((b) => ({ type: b.type, id: b.id, name: b.name, input: b.input })),
      usage: message.usage,
    };
  },

  async count_tokens() {
    const counted = await anthropic.messages.countTokens({
      model,
      system: "be brief",
      messages: [{ role: "user", content: "how many tokens is this?" }],
    });
    return { input_tokens: counted.input_tokens };
  },

  async models() {
    const openaiIds = [];
    for await (const m of openai.models.list()) openaiIds.push(m.id);
    const anthropicModels = [];
    for await (const m of anthropic.models.list()) anthropicModels.push({ id: m.id, type: m.type });
    return { openai: openaiIds, anthropic: anthropicModels };
  },
};

if (!(caseName in cases)) {
  console.error(`unknown case ${caseName}; cases: ${Object.keys(cases).join(", ")}`);
  process.exit(2);
}
try {
  console.log(JSON.stringify(await cases[caseName]()));
} catch (error) {
  console.error(`${error?.constructor?.name}: status=${error?.status} ${error?.message}`);
  process.exit(1);
}
