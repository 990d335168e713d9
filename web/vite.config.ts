/// <reference types="vitest/config" />
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The gateway serves the built page (under /app/) and the API from the same
// origin, so the page calls the API with absolute paths and no CORS is needed.
// During `npm run dev`, /api is forwarded to a locally running gateway so the
// same relative paths work without CORS.
export default defineConfig({
  base: "/app/",
  plugins: [react()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
  },
  server: {
    proxy: {
      "/api": "http://127.0.0.1:8080",
    },
  },
  test: {
    environment: "node",
    include: ["src/**/*.test.ts"],
  },
});
