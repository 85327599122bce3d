// counter in JavaScript: numbers messages with a counter in the pipeline's
// key-value store (config `key`, default `count`); each message passes with a
// field `count` holding the counter's new value. It also claims `<key>:first`
// for the first message it sees (for a minute), and writes that message's id
// in `first` to every message: the other kv helpers at work.
import { kv, processor } from "../../sdk/js/sluice.js";

export const { init, process } = processor({
  init(config) {
    return config.key ?? "count";
  },

  process(msg, key) {
    const n = kv.incr(key);
    kv.setNew(`${key}:first`, msg.id, 60_000);
    kv.set(`${key}:scratch`, "x", 60_000);
    kv.delete(`${key}:scratch`);
    const first = kv.get(`${key}:first`);
    return [msg.record().set("count", String(n)).set("id", msg.id).set("first", first)];
  },
});
