// json-enrich in JavaScript: parses one field as a JSON object, adds every
// other config key to it as a string, and writes it back into the same field.
// A message without the field, or whose field is not a JSON object, is
// dead-lettered.
import { Failure, processor } from "../../sdk/js/sluice.js";

export const { init, process } = processor({
  init(config) {
    const { field = "payload", ...extra } = config;
    return { field, extra };
  },

  process(msg, { field, extra }) {
    const value = msg.get(field);
    if (value === undefined) throw new Failure("dead-letter", `missing field \`${field}\``);
    let object;
    try {
      object = JSON.parse(value);
    } catch (e) {
      throw new Failure("dead-letter", `field \`${field}\` is not a JSON object: ${e.message}`);
    }
    if (object === null || typeof object !== "object" || Array.isArray(object)) {
      throw new Failure("dead-letter", `field \`${field}\` is not a JSON object`);
    }
    return [msg.record().set(field, JSON.stringify({ ...object, ...extra }))];
  },
});
