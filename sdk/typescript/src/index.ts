// The TypeScript client of the dvt HTTP service.
export * from "./client.js";
export * from "./errors.js";
export * from "./models.js";
export type { components, operations, paths } from "./openapi.js";
