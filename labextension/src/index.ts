/**
 * The "HTCondor maps" sidebar: the maps of the server user (htcml_jupyter), their
 * item counts, age and pool, with Cancel and Retry; clicking a map adds a cell that
 * attaches to it in the active notebook.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

/** One map as the server extension lists it (GET /htcml/maps). */
export interface IMapSummary {
  name: string;
  kind: 'map' | 'sweep';
  function: string;
  pool: string;
  n_items: number;
  created: number;
  age: number;
  counts: Record<string, number>;
  running: boolean;
  submitting: boolean;
  error: string | null;
  /** What its jobs used, in one line, once any finished ("" before). */
  usage: string;
}

/** Milliseconds between two looks while a map runs, and while none does. */
const POLL_RUNNING = 2000;
const POLL_IDLE = 15000;
/** The order in which item states are shown. */
const STATES = ['running', 'idle', 'done', 'failed', 'held', 'removed'];

const mapsIcon = new LabIcon({
  name: 'htcml-jupyter-sidebar:maps',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<rect x="2" y="3" width="6" height="5" rx="1"/><rect x="9" y="3" width="6" height="5" rx="1"/>' +
    '<rect x="16" y="3" width="6" height="5" rx="1"/><rect x="2" y="10" width="6" height="5" rx="1"/>' +
    '<rect x="9" y="10" width="6" height="5" rx="1"/><rect x="16" y="10" width="6" height="5" ' +
    'rx="1" opacity=".4"/><rect x="2" y="17" width="20" height="4" rx="1"/></g></svg>'
});

/** Call an endpoint under /htcml/ (the token and XSRF header come with the settings). */
async function requestAPI<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'htcml', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  const body = text ? JSON.parse(text) : {};
  if (!response.ok) {
    throw new Error(body.message || `${response.status} ${response.statusText}`);
  }
  return body as T;
}

/** "42 s", "7 min", "3 h", "2 d". */
function ageText(seconds: number): string {
  if (seconds < 90) {
    return `${Math.round(seconds)} s`;
  }
  if (seconds < 90 * 60) {
    return `${Math.round(seconds / 60)} min`;
  }
  if (seconds < 36 * 3600) {
    return `${Math.round(seconds / 3600)} h`;
  }
  return `${Math.round(seconds / 86400)} d`;
}

function element(tag: string, className: string, text?: string): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** The sidebar widget: polls the server extension and renders one row per map. */
export class MapsSidebar extends Widget {
  constructor(private readonly tracker: INotebookTracker | null) {
    super();
    this.id = 'htcml-maps-sidebar';
    this.title.icon = mapsIcon;
    this.title.caption = 'HTCondor maps';
    this.addClass('htcml-sidebar');
    this.node.appendChild(element('div', 'htcml-sidebar-title', 'HTCondor maps'));
    this.status = element('div', 'htcml-sidebar-status', 'Loading…');
    this.list = element('ul', 'htcml-maps');
    this.node.append(this.status, this.list);
    void this.poll();
  }

  dispose(): void {
    if (this.timer !== null) {
      window.clearTimeout(this.timer);
      this.timer = null;
    }
    super.dispose();
  }

  /** Look at once when the sidebar is shown (hidden, it looks only now and then). */
  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.poll();
  }

  /** Fetch the maps now, render them, and schedule the next look. */
  async poll(): Promise<void> {
    if (this.timer !== null) {
      window.clearTimeout(this.timer);
      this.timer = null;
    }
    let delay = POLL_IDLE;
    try {
      const reply = await requestAPI<{ root: string; maps: IMapSummary[] }>('maps');
      this.render(reply.maps, reply.root);
      if (this.isVisible && reply.maps.some(m => m.running)) {
        delay = POLL_RUNNING;
      }
    } catch (error) {
      this.showStatus(`Could not list the maps: ${error}`, true);
    }
    if (!this.isDisposed) {
      this.timer = window.setTimeout(() => void this.poll(), delay);
    }
  }

  private showStatus(text: string, isError = false): void {
    this.status.textContent = text;
    this.status.classList.toggle('htcml-error', isError);
  }

  private render(maps: IMapSummary[], root: string): void {
    const running = maps.filter(m => m.running).length;
    this.status.title = `Maps under ${root}`;
    this.showStatus(
      maps.length
        ? `${maps.length} ${maps.length === 1 ? 'map' : 'maps'}, ${running} running`
        : `No maps in ${root} yet`
    );
    this.list.replaceChildren(...maps.slice().reverse().map(m => this.row(m)));
  }

  private row(map: IMapSummary): HTMLElement {
    const row = element('li', 'htcml-map');
    row.dataset.name = map.name;
    row.title = `Click to attach to ${map.name} in the active notebook`;
    const head = element('div', 'htcml-map-head');
    head.append(
      element('span', 'htcml-map-name', map.name),
      element('span', 'htcml-map-kind', map.kind)
    );
    const meta = element(
      'div',
      'htcml-map-meta',
      `${map.function} · ${map.n_items} items · ${ageText(map.age)} ago · ${map.pool}`
    );
    const counts = element('div', 'htcml-map-counts');
    if (map.submitting) {
      counts.append(element('span', 'htcml-count htcml-count-idle', 'submitting…'));
    }
    if (map.error) {
      counts.append(element('span', 'htcml-count htcml-count-failed', map.error));
    }
    for (const state of STATES) {
      const n = map.counts[state] || 0;
      if (n) {
        const badge = element('span', `htcml-count htcml-count-${state}`, `${n} ${state}`);
        badge.dataset.state = state;
        counts.append(badge);
      }
    }
    const actions = element('div', 'htcml-map-actions');
    const retryable = ['failed', 'held', 'removed'].some(s => (map.counts[s] || 0) > 0);
    actions.append(
      this.button('Cancel', 'htcml-cancel jp-mod-warn', map.name, 'cancel',
        map.running && !map.submitting),
      this.button('Retry', 'htcml-retry', map.name, 'retry', retryable && !map.submitting)
    );
    row.append(head, meta, counts);
    if (map.usage) {
      row.append(element('div', 'htcml-map-usage', map.usage));
    }
    row.append(actions);
    row.addEventListener('click', () => this.attach(map.name));
    return row;
  }

  private button(
    label: string,
    className: string,
    name: string,
    action: 'cancel' | 'retry',
    enabled: boolean
  ): HTMLElement {
    const button = element('button', `jp-Button jp-mod-styled ${className}`, label);
    (button as HTMLButtonElement).disabled = !enabled;
    button.addEventListener('click', event => {
      event.stopPropagation();
      void this.act(name, action);
    });
    return button;
  }

  private async act(name: string, action: 'cancel' | 'retry'): Promise<void> {
    if (action === 'cancel') {
      const answer = await showDialog({
        title: `Cancel ${name}?`,
        body: 'Its unfinished jobs leave the queue; finished results stay.',
        buttons: [
          Dialog.cancelButton({ label: 'Keep running' }),
          Dialog.warnButton({ label: 'Cancel map' })
        ]
      });
      if (!answer.button.accept) {
        return;
      }
    }
    this.showStatus(`${action === 'cancel' ? 'Cancelling' : 'Retrying'} ${name}…`);
    try {
      await requestAPI(`maps/${encodeURIComponent(name)}/${action}`, { method: 'POST' });
    } catch (error) {
      this.showStatus(`Could not ${action} ${name}: ${error}`, true);
      return;
    }
    await this.poll();
  }

  /** Add `m = htc.attach("NAME")` below the active cell of the active notebook. */
  private attach(name: string): void {
    const panel = this.tracker?.currentWidget;
    if (!panel) {
      this.showStatus(`Open a notebook to attach to ${name}`, true);
      return;
    }
    const notebook = panel.content;
    NotebookActions.insertBelow(notebook);
    const cell = notebook.activeCell;
    if (cell) {
      cell.model.sharedModel.setSource(
        `import htcml_jupyter as htc\nm = htc.attach(${JSON.stringify(name)})`
      );
    }
    this.showStatus(`Added a cell that attaches to ${name}`);
  }

  private readonly status: HTMLElement;
  private readonly list: HTMLElement;
  private timer: number | null = null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'htcml-jupyter-sidebar:plugin',
  description: 'A sidebar that lists htcml_jupyter maps, with Cancel and Retry.',
  autoStart: true,
  optional: [INotebookTracker],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker | null) => {
    app.shell.add(new MapsSidebar(tracker), 'left', { rank: 1000 });
  }
};

export default plugin;
