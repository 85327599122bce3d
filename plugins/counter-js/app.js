// counter in JavaScript: numbers messages with a counter in the pipeline's
// key-value store (config `key`, default `count`); each message passes with a
// field `count` holding the counter's new value.
import { kv, processor } from "../../sdk/js/sluice.js";

export const { init, process } = processor({
  init(config) {
    return config.key ?? "count";
  },

  process(msg, key) {
    return [msg.record().set("count", String(kv.incr(key)))];
  },
});
