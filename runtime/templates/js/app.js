// {{name}}: a Sluice processor. Passes every message on with one field
// added, `processed_by` (config `tag`, default "{{name}}"), and dead-letters
// a message without a `payload` field.
import { Failure, processor } from "./sluice.js";

export const { init, process } = processor({
  init(config) {
    return config.tag ?? "{{name}}";
  },

  process(msg, tag) {
    if (msg.get("payload") === undefined) throw new Failure("dead-letter", "missing field `payload`");
    return [msg.record().set("processed_by", tag)];
  },
});
