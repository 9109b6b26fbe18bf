// A few seconds of steady buying, for CI and `helm test`: proves the path works end to end.
//   BASE_URL, SALE, JWT_SECRET, BUYERS (500), RATE (100/s), DURATION (5s)
import { buy, config, summaryWriter } from './lib/buy.js';
import { steady, TREND_STATS } from './lib/shapes.js';

export const options = {
  scenarios: { smoke: steady(100, '5s', 200) },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    reservations_unexpected: ['count==0'],
    reservations_accepted: ['count>0'],
  },
  summaryTrendStats: TREND_STATS,
};

const cfg = config();
export default function () { buy(cfg); }
export const handleSummary = summaryWriter('smoke');
