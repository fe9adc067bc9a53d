// JSON-RPC 2.0 over POST /rpc, the node's control plane. A refusal for a missing or
// wrong control token (HTTP 401) asks for the token and tries again.

import { askToken, getToken } from "./token.js";

export class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export const INVALID_PARAMS = -32602;

let nextId = 1;

/** Call `method`; returns its result or throws an RpcError with the node's message. */
export async function call(method, params = {}) {
  for (;;) {
    const token = getToken();
    // application/json is required by the node: a cross-site page could only send it
    // after a CORS preflight, which the node never grants.
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch("/rpc", {
      method: "POST",
      headers,
      cache: "no-store",
      body: JSON.stringify({ jsonrpc: "2.0", id: nextId++, method, params }),
    });
    if (response.status === 401) {
      await askToken(token ? "That token was not accepted." : "");
      continue;
    }
    const body = await response.json().catch(() => null);
    if (body?.error) throw new RpcError(body.error.code, body.error.message);
    if (!response.ok || !body) throw new RpcError(-1, `HTTP ${response.status}`);
    return body.result;
  }
}
