"""Drive Scipion's real project window the way a user does and report what appeared on screen.

Run under an X server (``xvfb-run``) by test_plugin_gui.py, with the Scipion environment of the
plugin tests::

    python gui_driver.py PROJECT_PATH PROTOCOL_ID OUT_DIR

It opens ``pyworkflow.gui.project.ProjectWindow`` (what ``scipion project NAME`` opens), clicks
the protocol's box in the runs graph, clicks "Analyze Results", and in the viewer form that opens
presses the eye button of each display. Then it writes ``OUT_DIR/report.json`` (every window
with its title, and what each matplotlib figure window rendered), screenshots of the X root
window and of each window (``import`` of ImageMagick), and exits. Nothing of the code under test
is patched: the steps are scheduled with ``root.after`` on the GUI's own Tk main loop.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

STEP_TIMEOUT = 20.0  # seconds a step may wait for the GUI
POLL_MS = 200
WATCHDOG = float(os.environ.get("LIVE2D_GUI_WATCHDOG", "90"))
DISPLAYS = ("displayGallery", "displayEvolution")  # the viewer's params with an eye button


def screenshot(path: Path, window: str = "root") -> str | None:
    """X screenshot (of the root window or of one window id); returns an error or None."""
    try:
        done = subprocess.run(["import", "-window", window, str(path)], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"import -window {window}: {exc}"
    return None if done.returncode == 0 else f"import -window {window}: {done.stderr.strip()}"


def figure_windows() -> list:
    """Matplotlib's figure managers (each a TkAgg window of its own Tk interpreter)."""
    from matplotlib._pylab_helpers import Gcf

    return list(Gcf.get_all_fig_managers())


def rendered_pixels(manager):
    """RGB of what the figure canvas rendered (its Agg buffer, which TkAgg blits on screen)."""
    import numpy as np

    manager.window.update()
    manager.canvas.draw()
    return np.array(manager.canvas.buffer_rgba())[..., :3]


def on_screen_match(shot: Path, pixels) -> float:
    """Fraction of the canvas's pixels that a window's screenshot shows (the canvas is the top
    left of a matplotlib window, its toolbar below)."""
    import numpy as np
    from PIL import Image

    with Image.open(shot) as image:
        screen = np.asarray(image.convert("RGB")).astype(int)
    height, width = pixels.shape[:2]
    if screen.shape[0] < height or screen.shape[1] < width:
        return 0.0
    diff = np.abs(screen[:height, :width] - pixels.astype(int)).max(axis=-1)
    return float((diff <= 8).mean())


def distinct_colours(rgb) -> int:
    """How many colours an (..., 3) uint8 RGB array holds. Each pixel packed into one integer:
    np.unique over rows (axis=0) counts the same, some hundred times slower."""
    import numpy as np

    packed = rgb.reshape(-1, 3).astype(np.uint32)
    return len(np.unique(packed[:, 0] << 16 | packed[:, 1] << 8 | packed[:, 2]))


def describe_figure(manager) -> dict:
    """Title, geometry and what the figure canvas rendered."""
    import numpy as np

    window, canvas = manager.window, manager.canvas
    pixels = rendered_pixels(manager)
    axes = canvas.figure.axes
    images = [image for ax in axes for image in ax.get_images()]
    suptitle = canvas.figure._suptitle.get_text() if canvas.figure._suptitle else ""
    return {
        "title": window.title(),
        "canvas": type(canvas).__name__,
        "mapped": bool(window.winfo_ismapped()),
        "geometry": window.winfo_geometry(),
        "frame_id": window.wm_frame(),
        "suptitle": suptitle,
        "axes": len(axes),
        "axes_titles": [ax.get_title() for ax in axes],
        "images": len(images),
        "images_not_flat": sum(float(np.ptp(np.asarray(image.get_array()))) > 0
                               for image in images),
        "artists": sum(len(ax.get_children()) for ax in axes),
        "pixels_shape": list(pixels.shape),
        "pixel_values": distinct_colours(pixels),
        "pixel_std": float(pixels.std()),
    }


def tk_windows(root) -> list[dict]:
    """Every toplevel of Scipion's Tk interpreter, with its title and state."""
    import tkinter as tk

    found = []

    def walk(widget):
        for child in widget.winfo_children():
            if isinstance(child, tk.Toplevel):
                found.append({"path": str(child), "title": child.wm_title(),
                              "state": child.wm_state(), "mapped": bool(child.winfo_ismapped()),
                              "geometry": child.winfo_geometry()})
            walk(child)

    walk(root.nametowidget("."))  # the hidden tk.Tk of Scipion, parent of every window
    return found


class Driver:
    def __init__(self, window, protocol_id: int, out: Path):
        self.window = window
        self.root = window.root
        self.protocol_id = protocol_id
        self.out = out
        self.report: dict = {"steps": [], "errors": [], "screenshots": {}}
        self.form = None  # the viewer's FormWindow
        self.figures: dict[str, object] = {}  # display param -> its matplotlib figure manager
        self.known: set[int] = set()  # figure managers open before an eye button was pressed
        self.steps = [self.select_protocol, self.analyze_results, self.viewer_form_opened]
        for name in DISPLAYS:
            self.steps += [lambda n=name: self.press_eye(n), lambda n=name: self.figure_shown(n)]
        self.steps += [self.arrange]
        self.started = time.monotonic()
        self.step_started = self.started

    # ------------------------------------------------------------------------------ machinery
    def start(self) -> None:
        self.root.after(500, self.tick)

    def tick(self) -> None:
        try:
            if not self.steps:
                self.finish()
                return
            step = self.steps[0]
            if step():
                self.report["steps"].append(
                    {"step": self.step_name(step), "at_s": round(time.monotonic() - self.started,
                                                                 2)})
                self.steps.pop(0)
                self.step_started = time.monotonic()
            elif time.monotonic() - self.step_started > STEP_TIMEOUT:
                self.report["errors"].append(f"timed out at step {self.step_name(step)}")
                self.finish()
                return
        except Exception:
            self.report["errors"].append(traceback.format_exc())
            self.finish()
            return
        self.root.after(POLL_MS, self.tick)

    @staticmethod
    def step_name(step) -> str:
        name = step.__name__
        if name == "<lambda>":
            name = f"{step.__code__.co_names[-1]}({step.__defaults__[0]})"
        return name

    # ------------------------------------------------------------------------------ steps
    def select_protocol(self) -> bool:
        """Click the protocol's box in the runs graph."""
        view = self.window.getViewWidget()
        canvas = getattr(view, "runsGraphCanvas", None)
        if canvas is None or not canvas.winfo_ismapped():
            return False
        boxes = [item for item in canvas.items.values()
                 if getattr(getattr(item, "node", None), "run", None) is not None
                 and item.node.run.getObjId() == self.protocol_id]
        if not boxes:
            return False
        x1, y1, x2, y2 = canvas.bbox(boxes[0].id)
        # canvas to widget coordinates (the canvas may be scrolled)
        x = int((x1 + x2) / 2 - canvas.canvasx(0))
        y = int((y1 + y2) / 2 - canvas.canvasy(0))
        canvas.focus_force()
        canvas.event_generate("<Button-1>", x=x, y=y)
        canvas.event_generate("<ButtonRelease-1>", x=x, y=y)
        selected = view.getSelectedProtocol()
        self.report["selected"] = selected.getRunName() if selected else None
        self.report["summary"] = view.summaryText.get("1.0", "end").strip()
        return selected is not None and selected.getObjId() == self.protocol_id

    def analyze_results(self) -> bool:
        """Click "Analyze Results" (queued: the viewer form enters a nested main loop)."""
        button = self.window.getViewWidget().btnAnalyze
        if not button.winfo_ismapped():
            return False
        self.report["analyze_button"] = button.cget("text")
        button.event_generate("<Button-1>", when="tail")
        return True

    def viewer_form_opened(self) -> bool:
        from pyworkflow.gui.form import FormWindow

        # The form object is only referenced from Tk callbacks: find it among live objects
        # (type(), not isinstance(): that would poke lazy modules' __class__).
        forms = [obj for obj in gc.get_objects()
                 if issubclass(type(obj), FormWindow) and obj.visualizeMode]
        forms = [form for form in forms if form.root.winfo_exists()
                 and form.root.winfo_ismapped()]
        if not forms:
            return False
        self.form = forms[0]
        self.report["viewer_form"] = {"title": self.form.root.wm_title(),
                                      "viewer": type(self.form.protocol).__name__,
                                      "params": list(self.form.widgetDict)}
        return True

    def press_eye(self, name: str) -> bool:
        """Press the eye ("Show") button of a display param of the viewer form."""
        import pyworkflow.utils as pwutils

        self.known = set(map(id, figure_windows()))
        widget = self.form.widgetDict.get(name)
        if widget is None:
            raise RuntimeError(f"the viewer form has no param {name}: "
                               f"{list(self.form.widgetDict)}")
        buttons = [b for b in widget.btnFrame.winfo_children()
                   if b.winfo_class() == "Button"
                   and b.cget("text") == pwutils.Message.LABEL_BUTTON_VIS]
        if not buttons:
            raise RuntimeError(f"{name} has no eye button")
        buttons[0].invoke()
        return True

    def figure_shown(self, name: str) -> bool:
        new = [m for m in figure_windows() if id(m) not in self.known]
        if not new or not new[0].window.winfo_ismapped():
            return False
        self.figures[name] = new[0]
        return True

    def arrange(self) -> bool:
        """Spread the windows over the screen, so that one screenshot shows them all. Without a
        window manager every window stays where it opened (the figures all at 0,0). A move
        followed by update() in the same callback came back undone here, so this step only
        requests the moves and checks them on the next tick."""
        places = [(self.form.root, (1000, 40))]
        places += [(self.figures[name].window, xy)
                   for name, xy in (("displayGallery", (0, 0)), ("displayEvolution", (700, 650)))]
        done = True
        for window, (x, y) in places:
            if (window.winfo_rootx(), window.winfo_rooty()) != (x, y):
                window.geometry(f"+{x}+{y}")
                done = False
        return done

    # ------------------------------------------------------------------------------ report
    def finish(self) -> None:
        try:
            self.collect()
        except Exception:
            self.report["errors"].append(traceback.format_exc())
        write_report(self.out, self.report)
        sys.stdout.flush()
        os._exit(0)  # nested Tk main loops (the viewer form) make a clean quit fiddly

    def collect(self) -> None:
        self.root.update()
        self.report["tk_windows"] = tk_windows(self.root)
        self.report["figures"] = {}
        for manager in figure_windows():
            name = next((n for n, m in self.figures.items() if m is manager),
                        f"figure{manager.num}")
            self.report["figures"][name] = describe_figure(manager)
        time.sleep(0.3)
        shots = self.report["screenshots"]
        error = screenshot(self.out / "screen.png")
        shots["screen"] = error or str(self.out / "screen.png")
        windows = [("project", self.root)]
        if self.form is not None:
            windows.append(("viewer_form", self.form.root))
        windows += [(name, m.window) for name, m in self.figures.items()]
        for name, tkwindow in windows:  # each window in front of the others, alone
            tkwindow.lift()
            tkwindow.update()
            time.sleep(0.2)
            path = self.out / f"{name}.png"
            error = screenshot(path, tkwindow.wm_frame())
            shots[name] = error or str(path)
            if name in self.figures and error is None:
                self.report["figures"][name]["screenshot_matches_canvas"] = on_screen_match(
                    path, rendered_pixels(self.figures[name]))


def write_report(out: Path, report: dict) -> None:
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(out / "report.json")


def watchdog(out: Path, driver_report: dict) -> None:
    """If the GUI hangs (a blocking call, a stuck loop), still leave a report and a screenshot."""
    time.sleep(WATCHDOG)
    driver_report["errors"].append(f"watchdog: the GUI did not finish in {WATCHDOG:.0f} s")
    driver_report["screenshots"]["screen"] = (screenshot(out / "screen.png")
                                              or str(out / "screen.png"))
    write_report(out, driver_report)
    os._exit(3)


def main(argv: list[str] | None = None) -> None:
    project_path, protocol_id, out = (argv or sys.argv[1:])[:3]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from pyworkflow.gui.project import ProjectWindow

    window = ProjectWindow(project_path)
    driver = Driver(window, int(protocol_id), out)
    threading.Thread(target=watchdog, args=(out, driver.report), daemon=True).start()
    driver.start()
    window.show()  # the Tk main loop; the driver's steps run inside it and end the process


if __name__ == "__main__":
    main()
