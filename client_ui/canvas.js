// A drawing surface for one digit: pointer events (mouse, pen, touch), undo and clear.
// Strokes are kept as point lists so undo can redraw; the PNG has a white background.
export default {
  template: `<canvas ref="canvas" :width="size" :height="size"
    style="touch-action: none; cursor: crosshair; background: white; border-radius: 8px;
           border: 1px solid #ccc; max-width: 100%"></canvas>`,
  props: {
    size: { type: Number, default: 280 },
    strokeWidth: { type: Number, default: 18 },
  },
  mounted() {
    this.strokes = [];
    this.current = null;
    const canvas = this.$refs.canvas;
    canvas.addEventListener("pointerdown", (event) => this.start(event));
    canvas.addEventListener("pointermove", (event) => this.extend(event));
    canvas.addEventListener("pointerup", (event) => this.finish(event));
    canvas.addEventListener("pointercancel", (event) => this.finish(event));
    this.redraw();
  },
  methods: {
    position(event) {
      const canvas = this.$refs.canvas;
      const box = canvas.getBoundingClientRect();
      return [
        ((event.clientX - box.left) * canvas.width) / box.width,
        ((event.clientY - box.top) * canvas.height) / box.height,
      ];
    },
    start(event) {
      // One stroke at a time: a second finger or a palm does not take over the stroke drawn.
      if (this.current || (event.pointerType === "mouse" && event.button !== 0)) return;
      event.preventDefault();
      this.$refs.canvas.setPointerCapture(event.pointerId);
      this.pointer = event.pointerId;
      this.current = { width: this.strokeWidth, points: [this.position(event)] };
      this.paint(this.current);
    },
    extend(event) {
      if (!this.current || event.pointerId !== this.pointer) return;
      event.preventDefault();
      const samples = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
      for (const sample of samples.length ? samples : [event]) {
        this.current.points.push(this.position(sample));
      }
      this.paint(this.current);
    },
    finish(event) {
      if (!this.current || event.pointerId !== this.pointer) return;
      event.preventDefault();
      this.strokes.push(this.current);
      this.current = null;
      this.$emit("stroke", this.snapshot());
    },
    paint(stroke) {
      const context = this.$refs.canvas.getContext("2d");
      context.strokeStyle = "black";
      context.fillStyle = "black";
      context.lineWidth = stroke.width;
      context.lineCap = "round";
      context.lineJoin = "round";
      const [first, ...rest] = stroke.points;
      if (rest.length === 0) {
        context.beginPath();
        context.arc(first[0], first[1], stroke.width / 2, 0, 2 * Math.PI);
        context.fill();
        return;
      }
      context.beginPath();
      context.moveTo(first[0], first[1]);
      for (const [x, y] of rest) context.lineTo(x, y);
      context.stroke();
    },
    redraw() {
      const canvas = this.$refs.canvas;
      const context = canvas.getContext("2d");
      context.fillStyle = "white";
      context.fillRect(0, 0, canvas.width, canvas.height);
      for (const stroke of this.strokes) this.paint(stroke);
    },
    snapshot() {
      const strokes = this.strokes.length;
      if (!strokes) return { strokes, png: null, extent: 0 };
      return { strokes, png: this.$refs.canvas.toDataURL("image/png"), extent: this.extent() };
    },
    extent() {
      // The drawing's longer side, ink included, in widths of its widest pen: 1 for a dot.
      let pen = 0, left = Infinity, right = -Infinity, top = Infinity, bottom = -Infinity;
      for (const stroke of this.strokes) {
        pen = Math.max(pen, stroke.width);
        for (const [x, y] of stroke.points) {
          left = Math.min(left, x); right = Math.max(right, x);
          top = Math.min(top, y); bottom = Math.max(bottom, y);
        }
      }
      return (Math.max(right - left, bottom - top) + pen) / pen;
    },
    clear() {
      this.strokes = [];
      this.current = null;
      this.redraw();
      return this.snapshot();
    },
    undo() {
      this.strokes.pop();
      this.redraw();
      return this.snapshot();
    },
  },
};
