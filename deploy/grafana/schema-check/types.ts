/**
 * The types a sonitor dashboard JSON must satisfy, built from Grafana's published schema
 * (@grafana/schema). check.mjs turns the JSON into a typed TypeScript literal of these types, so
 * `tsc` reports wrong field types, unknown fields (excess-property checks) and unknown options of
 * each panel type.
 *
 * Why a JSON view (`Json<T>`): the schema declares string enums (e.g. ThresholdsMode), and a JSON
 * string such as "absolute" is not assignable to a TypeScript string enum. `Json<T>` replaces
 * every string enum by the union of its values, which is exactly what JSON can hold.
 *
 * Why `PromQuery`: @grafana/schema types panel targets as `Record<string, unknown>`; the
 * Prometheus query fields below are the Prometheus data source's query model (Grafana's
 * `PromQuery`), written out here so a misspelt `expr` or `legendFormat` is caught too.
 */
import type {
  AnnotationQuery,
  Dashboard,
  DataQuery,
  FieldConfig,
  FieldConfigSource,
  Panel,
  RowPanel,
  VariableModel,
} from '@grafana/schema';
import type {
  Options as StatOptions,
} from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type {
  FieldConfig as StateTimelineFieldConfig,
  Options as StateTimelineOptions,
} from '@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';
import type {
  FieldConfig as TableFieldConfig,
  Options as TableOptions,
} from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type {
  FieldConfig as TimeSeriesFieldConfig,
  Options as TimeSeriesOptions,
} from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

/** T as JSON can hold it: string enums become the union of their string values. */
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends Array<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

/** A Prometheus data source query (Grafana's PromQuery model). */
export interface PromQuery extends DataQuery {
  expr: string;
  legendFormat?: string;
  instant?: boolean;
  range?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  intervalFactor?: number;
  exemplar?: boolean;
  editorMode?: 'code' | 'builder';
}

/** Field config with the panel plugin's own `custom` options (no catch-all index signature). */
type TypedFieldConfigSource<C> = Omit<FieldConfigSource, 'defaults'> & {
  defaults: Omit<FieldConfig, 'custom'> & { custom?: C };
};

/** A panel of one plugin type: its options, custom field config and Prometheus targets. */
type PanelOf<K extends string, O, C> = Omit<Panel, 'type' | 'options' | 'fieldConfig' | 'targets'> & {
  type: K;
  options: O;
  fieldConfig: TypedFieldConfigSource<C>;
  targets: PromQuery[];
};

/** The panel types this dashboard may use; any other `type` fails the check. */
export interface PanelKinds {
  timeseries: PanelOf<'timeseries', TimeSeriesOptions, TimeSeriesFieldConfig>;
  stat: PanelOf<'stat', StatOptions, Record<string, never>>;
  statetimeline: PanelOf<'statetimeline', StateTimelineOptions, StateTimelineFieldConfig>;
  table: PanelOf<'table', TableOptions, TableFieldConfig>;
  row: Omit<RowPanel, 'type' | 'panels'> & { type: 'row'; panels: [] };
}

export type PanelJson<K extends keyof PanelKinds> = Json<PanelKinds[K]>;

/** The Prometheus data source's annotation fields on top of the schema's AnnotationQuery. */
export interface PromAnnotation extends Omit<AnnotationQuery<PromQuery>, 'target'> {
  target: PromQuery;
  titleFormat?: string;
  textFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
}

/** The dashboard minus its panels (each panel is checked against its own plugin's type). */
export type DashboardJson = Json<Omit<Dashboard, 'panels' | 'annotations' | 'templating'>> & {
  annotations: { list: Array<Json<PromAnnotation>> };
  templating: { list: Array<Json<VariableModel>> };
  panels: Array<PanelJson<keyof PanelKinds>>;
};
