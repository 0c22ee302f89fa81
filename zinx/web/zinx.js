// Zinx frames over WebSocket, for browsers: a dependency-free ES module,
// used as it is (no build step).
//
//   import { ZinxSocket } from "./zinx.js";
//   const zinx = await ZinxSocket.connect("ws://127.0.0.1:9000/", { layout: "tlv" });
//   zinx.onmessage = ({ id, data }) => console.log(id, new TextDecoder().decode(data));
//   zinx.send(1, "hello");
//
// The server reads WebSocket messages as one byte stream, as Go Zinx does, so
// nothing here depends on how frames fall into messages, in either direction.

/** Bytes before a frame's data: a message ID and a data length, 4 bytes each. */
export const HEADER_LEN = 8;

/** Go Zinx's `MaxPacketSize` default: the largest data length a frame may announce. */
export const DEFAULT_MAX_PACKET_SIZE = 4096;

/**
 * The two Zinx packet layouts, by name:
 * `tlv` is `[msgID u32 BE][len u32 BE][data]` (Go Zinx's default),
 * `ltv` is `[len u32 LE][msgID u32 LE][data]` (classic Zinx, the MMO demo).
 * @typedef {"tlv" | "ltv"} Layout
 */

/**
 * One Zinx message.
 * @typedef {{ id: number, data: Uint8Array }} Frame
 */

const utf8 = new TextEncoder();

/** A frame that announces more data than allowed, or a malformed argument. */
export class FrameError extends Error {
  name = "FrameError";
}

function checkLayout(layout) {
  if (layout !== "tlv" && layout !== "ltv") {
    throw new FrameError(`unknown layout ${JSON.stringify(layout)}: use "tlv" or "ltv"`);
  }
}

/**
 * The bytes of `data`, a string's as UTF-8.
 * @param {Uint8Array | ArrayBuffer | ArrayBufferView | string} data
 * @returns {Uint8Array}
 */
export function toBytes(data) {
  if (typeof data === "string") return utf8.encode(data);
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new FrameError("data must be a Uint8Array, an ArrayBuffer, a typed array or a string");
}

/**
 * Reads a frame header.
 * @param {Uint8Array} bytes at least {@link HEADER_LEN} bytes
 * @param {Layout} layout
 * @returns {{ id: number, length: number }}
 */
export function readHeader(bytes, layout) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_LEN);
  return layout === "tlv"
    ? { id: view.getUint32(0, false), length: view.getUint32(4, false) }
    : { id: view.getUint32(4, true), length: view.getUint32(0, true) };
}

/**
 * Encodes one frame.
 * @param {number} id message ID, an integer in 0..2^32-1
 * @param {Uint8Array | ArrayBuffer | ArrayBufferView | string} data
 * @param {Layout} [layout="tlv"]
 * @param {number} [maxPacketSize=4096] largest data length allowed (0: no limit);
 *   a Zinx server with the same setting would close the connection over a longer one
 * @returns {Uint8Array} the frame, header and data
 */
export function encodeFrame(id, data, layout = "tlv", maxPacketSize = DEFAULT_MAX_PACKET_SIZE) {
  checkLayout(layout);
  if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) {
    throw new FrameError(`message ID ${id} is not an integer in 0..4294967295`);
  }
  const body = toBytes(data);
  if (maxPacketSize > 0 && body.length > maxPacketSize) {
    throw new FrameError(`data of ${body.length} bytes is longer than maxPacketSize ${maxPacketSize}`);
  }
  const frame = new Uint8Array(HEADER_LEN + body.length);
  const view = new DataView(frame.buffer);
  if (layout === "tlv") {
    view.setUint32(0, id, false);
    view.setUint32(4, body.length, false);
  } else {
    view.setUint32(0, body.length, true);
    view.setUint32(4, id, true);
  }
  frame.set(body, HEADER_LEN);
  return frame;
}

/**
 * Decodes every whole frame at the start of `bytes`. Pure: nothing is kept
 * between calls; {@link FrameDecoder} carries the rest over.
 * @param {Uint8Array} bytes
 * @param {Layout} [layout="tlv"]
 * @param {number} [maxPacketSize=4096] largest data length a frame may announce (0: no limit)
 * @returns {{ frames: Frame[], rest: Uint8Array, error: FrameError | null }} the
 *   frames (their data are views into `bytes`), the bytes of an unfinished frame,
 *   and the error of a header that announces more than `maxPacketSize` (found as
 *   soon as the header is there; `rest` starts with it and nothing after it can
 *   be decoded)
 */
export function decodeFrames(bytes, layout = "tlv", maxPacketSize = DEFAULT_MAX_PACKET_SIZE) {
  checkLayout(layout);
  const frames = [];
  let at = 0;
  let error = null;
  while (bytes.length - at >= HEADER_LEN) {
    error = checkHeader(bytes.subarray(at), layout, maxPacketSize);
    if (error) break;
    const { id, length } = readHeader(bytes.subarray(at), layout);
    if (bytes.length - at - HEADER_LEN < length) break;
    frames.push({ id, data: bytes.subarray(at + HEADER_LEN, at + HEADER_LEN + length) });
    at += HEADER_LEN + length;
  }
  return { frames, rest: bytes.subarray(at), error };
}

function checkHeader(bytes, layout, maxPacketSize) {
  const { length } = readHeader(bytes, layout);
  return maxPacketSize > 0 && length > maxPacketSize
    ? new FrameError(`a frame announces ${length} bytes of data, more than maxPacketSize ${maxPacketSize}`)
    : null;
}

/**
 * Turns a byte stream that arrives in pieces of any size into frames.
 * Pieces are only joined once they hold a whole frame, so a frame that
 * arrives in many small pieces is copied once, not once per piece.
 */
export class FrameDecoder {
  /**
   * Set when a header announced more than `maxPacketSize`; the stream cannot
   * be decoded past it, so every later `push` returns no frames.
   * @type {FrameError | null}
   */
  error = null;

  #layout;
  #max;
  /** @type {Uint8Array[]} */
  #pieces = [];
  #size = 0;

  /**
   * @param {{ layout?: Layout, maxPacketSize?: number }} [options]
   */
  constructor({ layout = "tlv", maxPacketSize = DEFAULT_MAX_PACKET_SIZE } = {}) {
    checkLayout(layout);
    this.#layout = layout;
    this.#max = maxPacketSize;
  }

  /** Bytes held for a frame that has not arrived whole. */
  get buffered() {
    return this.#size;
  }

  /**
   * Adds the next piece of the stream.
   * @param {Uint8Array} piece
   * @returns {Frame[]} the frames it completes, in order, up to a header that
   *   announces too much (then {@link FrameDecoder#error} is set); their data
   *   are views of `piece` or of a copy, never reused
   */
  push(piece) {
    if (this.error || piece.length === 0) return [];
    this.#pieces.push(piece);
    this.#size += piece.length;
    if (this.#size < this.#needed()) return [];
    const { frames, rest, error } = decodeFrames(this.#join(), this.#layout, this.#max);
    this.#pieces = rest.length > 0 ? [rest] : [];
    this.#size = rest.length;
    this.error = error;
    return frames;
  }

  // Bytes the first unfinished frame needs: its header, then its data; 0 once
  // its header is known to be bad, so that push decodes up to it.
  #needed() {
    if (this.#size < HEADER_LEN) return HEADER_LEN;
    if (this.#pieces[0].length < HEADER_LEN) this.#pieces = [this.#join()];
    if (checkHeader(this.#pieces[0], this.#layout, this.#max)) return 0;
    return HEADER_LEN + readHeader(this.#pieces[0], this.#layout).length;
  }

  #join() {
    if (this.#pieces.length === 1) return this.#pieces[0];
    const all = new Uint8Array(this.#size);
    let at = 0;
    for (const p of this.#pieces) {
      all.set(p, at);
      at += p.length;
    }
    return all;
  }
}

/**
 * A WebSocket that carries Zinx frames. Sends each frame as one binary
 * message; reads binary and text messages (text as its UTF-8 bytes) as one
 * stream, so frames may span messages and a message may hold several.
 *
 * Frames go to `onmessage` when it is set; otherwise they wait for
 * {@link ZinxSocket#next} or `for await (const frame of socket)`.
 */
export class ZinxSocket {
  /** @type {((event: Event) => void) | null} */
  onopen = null;
  /** @type {((frame: Frame) => void) | null} */
  onmessage = null;
  /** @type {((error: Error) => void) | null} a {@link FrameError}, or an Error for the WebSocket's error event */
  onerror = null;
  /** @type {((event: CloseEvent) => void) | null} */
  onclose = null;

  /** @type {Error | null} why the socket failed, if it did (the first error given to `onerror`) */
  error = null;

  #ws;
  #layout;
  #max;
  #decoder;
  /** @type {Frame[]} frames no one has taken yet */
  #queue = [];
  /** @type {{ resolve: (f: Frame | null) => void, reject: (e: unknown) => void }[]} */
  #waiters = [];
  #closed = false;

  /**
   * Opens a connection (`WebSocket` semantics: it is open when `onopen` runs).
   * @param {string | URL} url e.g. `ws://127.0.0.1:9000/` (Zinx's `WsPort` and `WsPath`)
   * @param {{ layout?: Layout, maxPacketSize?: number, protocols?: string | string[] }} [options]
   *   `layout`: the server's packet layout (default `tlv`); `maxPacketSize`: the
   *   server's `MaxPacketSize` (default 4096; 0: no limit), enforced both ways
   */
  constructor(url, { layout = "tlv", maxPacketSize = DEFAULT_MAX_PACKET_SIZE, protocols } = {}) {
    this.#decoder = new FrameDecoder({ layout, maxPacketSize });
    this.#layout = layout;
    this.#max = maxPacketSize;
    this.#ws = new WebSocket(url, protocols);
    this.#ws.binaryType = "arraybuffer";
    this.#ws.onopen = (event) => this.onopen?.(event);
    this.#ws.onmessage = (event) => this.#receive(event.data);
    // The event says nothing more (browsers hide the cause); the close code follows.
    this.#ws.onerror = () => this.#fail(new Error(`WebSocket error on ${this.#ws.url}`));
    this.#ws.onclose = (event) => {
      this.#closed = true;
      for (const w of this.#waiters.splice(0)) {
        if (this.error) w.reject(this.error);
        else w.resolve(null);
      }
      this.onclose?.(event);
    };
  }

  /**
   * Opens a connection and waits until it is open.
   * @param {string | URL} url
   * @param {{ layout?: Layout, maxPacketSize?: number, protocols?: string | string[] }} [options]
   * @returns {Promise<ZinxSocket>} rejects if the connection closes before it opens
   */
  static connect(url, options) {
    const socket = new ZinxSocket(url, options);
    return new Promise((resolve, reject) => {
      socket.onopen = () => {
        socket.onopen = socket.onclose = null;
        resolve(socket);
      };
      socket.onclose = (event) => reject(new Error(`cannot connect to ${url} (close code ${event.code})`));
    });
  }

  /** The packet layout, `"tlv"` or `"ltv"`. */
  get layout() {
    return this.#layout;
  }

  /** The WebSocket's `readyState` (`WebSocket.OPEN` is 1). */
  get readyState() {
    return this.#ws.readyState;
  }

  /** The WebSocket's URL. */
  get url() {
    return this.#ws.url;
  }

  /**
   * Sends one message as one binary WebSocket message.
   * @param {number} id message ID, an integer in 0..2^32-1
   * @param {Uint8Array | ArrayBuffer | ArrayBufferView | string} [data] a string is sent as UTF-8
   * @throws {FrameError} on a bad ID or data longer than `maxPacketSize`;
   *   and as `WebSocket.send`, a `DOMException` before the socket is open
   */
  send(id, data = new Uint8Array(0)) {
    this.#ws.send(encodeFrame(id, data, this.#layout, this.#max));
  }

  /**
   * Closes the connection (`WebSocket.close`).
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code, reason) {
    this.#ws.close(code, reason);
  }

  /**
   * The next frame not taken by `onmessage`.
   * @returns {Promise<Frame | null>} `null` once the socket has closed cleanly
   *   and every frame was taken; rejects with {@link ZinxSocket#error} if it failed
   */
  next() {
    if (this.#queue.length > 0) return Promise.resolve(this.#queue.shift());
    if (this.#closed) return this.error ? Promise.reject(this.error) : Promise.resolve(null);
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** `for await (const { id, data } of socket)`: frames until the socket closes. */
  async *[Symbol.asyncIterator]() {
    for (let frame; (frame = await this.next()) !== null; ) yield frame;
  }

  #receive(data) {
    if (this.error) return;
    const frames = this.#decoder.push(typeof data === "string" ? utf8.encode(data) : new Uint8Array(data));
    for (const frame of frames) {
      if (this.onmessage) this.onmessage(frame);
      else if (this.#waiters.length > 0) this.#waiters.shift().resolve(frame);
      else this.#queue.push(frame);
    }
    if (this.#decoder.error) {
      // The stream cannot be resynchronised after a bad header, and buffering
      // what it announces is what the limit is there to prevent.
      this.#fail(this.#decoder.error);
      this.#ws.close();
    }
  }

  #fail(error) {
    this.error ??= error;
    this.onerror?.(error);
  }
}
