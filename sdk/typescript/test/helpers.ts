// What the tests share: the service under test (from the environment) and small plans.
import net from "node:net";

/** The service's URL and a key (roles runner, reader, operator, approver), from pytest. */
export function service(): { url: string; key: string } {
  const url = process.env.DVT_API_URL;
  const key = process.env.DVT_API_KEY;
  if (!url || !key) throw new Error("DVT_API_URL and DVT_API_KEY must name a running dvt serve");
  return { url, key };
}

/** n noop steps, each after the previous one. */
export function chainPlan(n: number, planId = "chain"): Record<string, unknown> {
  return {
    metadata: { planId, planVersion: "1", schemaVersion: "v1.2" },
    steps: Array.from({ length: n }, (_, i) => ({
      stepId: `s${i}`, kind: "noop", ...(i ? { dependsOn: [`s${i - 1}`] } : {}),
    })),
  };
}

/** build, then an approval gate, then publish: the run waits for an approver. */
export function gatedPlan(): Record<string, unknown> {
  return {
    metadata: { planId: "gated", planVersion: "1", schemaVersion: "v1.2" },
    steps: [
      { stepId: "build", kind: "noop" },
      { stepId: "signoff", kind: "approval", dependsOn: ["build"] },
      { stepId: "publish", kind: "echo", dependsOn: ["signoff"] },
    ],
  };
}

/**
 * A TCP proxy in front of the real service that can cut a connection: the first stream
 * connection is closed after `cutAfterBytes` bytes of its answer, and every request's head
 * is recorded (to check the reconnection carried Last-Event-ID).
 */
export class CuttingProxy {
  readonly heads: string[] = [];
  private server: net.Server;
  private cutsLeft: number;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly target: URL, cuts: number, private readonly cutAfterBytes: number) {
    this.cutsLeft = cuts;
    this.server = net.createServer((client) => this.pipe(client));
  }

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    const { port } = this.server.address() as net.AddressInfo;
    return `http://127.0.0.1:${port}`;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private pipe(client: net.Socket): void {
    const upstream = net.connect(Number(this.target.port), this.target.hostname);
    this.sockets.add(client).add(upstream);
    let isStream = false;
    let seen = 0;
    client.on("data", (chunk: Buffer) => {
      const head = chunk.toString("latin1");
      if (/^[A-Z]+ /.test(head)) {
        this.heads.push(head.split("\r\n\r\n")[0]);
        isStream = head.startsWith("GET ") && head.split(" ")[1].endsWith("/stream");
        seen = 0;
      }
      upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => {
      if (isStream && this.cutsLeft > 0 && seen + chunk.length >= this.cutAfterBytes) {
        // Only the bytes before the cut go through, so the client never sees the rest.
        this.cutsLeft -= 1;
        isStream = false;
        client.end(chunk.subarray(0, this.cutAfterBytes - seen), () => client.destroy());
        upstream.destroy();
        return;
      }
      client.write(chunk);
      seen += chunk.length;
    });
    const close = (): void => { client.destroy(); upstream.destroy(); };
    client.on("error", close);
    upstream.on("error", close);
    client.on("close", close);
    upstream.on("close", close);
  }
}
