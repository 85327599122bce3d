;; Uppercases the ASCII letters of every field value and passes the message
;; on: one record per message, same fields, to the pipeline's first sink.
;;
;; A plain core module: Sluice wraps it into a component at load. It speaks
;; the canonical ABI of the `processor` world in sdk/wit (layouts in
;; sdk/README.md): the runtime copies the batch into memory that
;; `cabi_realloc` hands out, calls `process`, and reads the outcomes back.
(module
  (memory (export "memory") 1)
  ;; Next free byte. 0..16 holds the return areas of init and process.
  (global $heap (mut i32) (i32.const 16))

  ;; Bump allocator: the runtime asks for room for the batch's messages,
  ;; strings and field lists; all of it is dropped after the batch.
  (func $realloc (export "cabi_realloc") (param $old i32) (param $old_size i32)
        (param $align i32) (param $size i32) (result i32)
    (local $ptr i32) (local $end i32)
    ;; Round up to the requested alignment.
    (local.set $ptr
      (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
               (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    ;; Grow memory when the end passes it; a refusal (memory_mb) traps.
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq (i32.const -1)
                    (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end)
                                                              (i32.shl (memory.size) (i32.const 16)))
                                                     (i32.const 0xffff))
                                            (i32.const 16))))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  ;; init(config) -> result<_, string>: no config; always ok (the return
  ;; area at 0 is zero, the `ok` case).
  (func (export "init") (param i32 i32) (result i32)
    (i32.const 0))

  ;; process(batch: list<message>) -> list<outcome>
  ;; message: 40 bytes, fields list at +16 (ptr) and +20 (count);
  ;; field: 16 bytes, value at +8 (ptr) and +12 (len);
  ;; outcome: 16 bytes, tag (0 = ok) at +0, list<output> at +4 and +8;
  ;; output: 20 bytes, fields list at +0 and +4, option `to` tag at +8.
  (func (export "process") (param $msgs i32) (param $n i32) (result i32)
    (local $outcomes i32) (local $outputs i32) (local $i i32)
    (local $msg i32) (local $field i32) (local $fields_end i32)
    (local $p i32) (local $end i32) (local $c i32) (local $out i32)
    (local.set $outcomes (call $realloc (i32.const 0) (i32.const 0) (i32.const 4)
                                 (i32.mul (local.get $n) (i32.const 16))))
    (local.set $outputs (call $realloc (i32.const 0) (i32.const 0) (i32.const 4)
                                (i32.mul (local.get $n) (i32.const 20))))
    (block $done
      (loop $messages
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $msg (i32.add (local.get $msgs) (i32.mul (local.get $i) (i32.const 40))))
        (local.set $field (i32.load offset=16 (local.get $msg)))
        (local.set $fields_end
          (i32.add (local.get $field) (i32.mul (i32.load offset=20 (local.get $msg)) (i32.const 16))))
        ;; Uppercase every value in place.
        (block $fields_done
          (loop $fields
            (br_if $fields_done (i32.ge_u (local.get $field) (local.get $fields_end)))
            (local.set $p (i32.load offset=8 (local.get $field)))
            (local.set $end (i32.add (local.get $p) (i32.load offset=12 (local.get $field))))
            (block $bytes_done
              (loop $bytes
                (br_if $bytes_done (i32.ge_u (local.get $p) (local.get $end)))
                (local.set $c (i32.load8_u (local.get $p)))
                ;; 'a'..'z' -> 'A'..'Z'
                (if (i32.lt_u (i32.sub (local.get $c) (i32.const 97)) (i32.const 26))
                  (then (i32.store8 (local.get $p) (i32.sub (local.get $c) (i32.const 32)))))
                (local.set $p (i32.add (local.get $p) (i32.const 1)))
                (br $bytes)))
            (local.set $field (i32.add (local.get $field) (i32.const 16)))
            (br $fields)))
        ;; One output: the message's own (now uppercased) field list, no `to`.
        (local.set $out (i32.add (local.get $outputs) (i32.mul (local.get $i) (i32.const 20))))
        (i32.store offset=0 (local.get $out) (i32.load offset=16 (local.get $msg)))
        (i32.store offset=4 (local.get $out) (i32.load offset=20 (local.get $msg)))
        (i32.store8 offset=8 (local.get $out) (i32.const 0))
        ;; outcome = ok([output])
        (local.set $c (i32.add (local.get $outcomes) (i32.mul (local.get $i) (i32.const 16))))
        (i32.store8 offset=0 (local.get $c) (i32.const 0))
        (i32.store offset=4 (local.get $c) (local.get $out))
        (i32.store offset=8 (local.get $c) (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $messages)))
    ;; The result list, through the return area at 8.
    (i32.store offset=8 (i32.const 0) (local.get $outcomes))
    (i32.store offset=12 (i32.const 0) (local.get $n))
    (i32.const 8))

  ;; Called once the runtime has read the outcomes: free the whole batch.
  (func (export "cabi_post_process") (param i32)
    (global.set $heap (i32.const 16))))
